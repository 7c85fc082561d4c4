"""Build of record for l2kd's compiled operators (``l2kd._C``).

Knobs (environment variables, read only here):
  L2KD_CPU_ONLY=1        never build the CUDA kernels
  FORCE_CUDA=1           build the CUDA kernels even if torch is not a CUDA build
  L2KD_DEBUG=1           -O0 -g, no vector-ISA flags
  L2KD_PORTABLE=1        do not add -mavx2/-mfma/-mf16c even if the build host has them
  TORCH_CUDA_ARCH_LIST   CUDA architectures (read by torch.utils.cpp_extension)

CUDA is built when FORCE_CUDA=1, or when torch is a CUDA build and nvcc is found; never
because a GPU is visible and never against a CPU-only torch (unless forced).
Every source under csrc/ is globbed: adding an op needs no change here.

Each build writes ``l2kd/_build_info.json`` next to the built library (gitignored): the C++
compiler and linker that built it (path and ``--version``), nvcc and its host compiler when CUDA
is built, and the torch it was built against. ``python -m l2kd.ops.selfcheck`` compares that
with the compiler torch itself was built with when a failing op call crashes.
"""
from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import subprocess

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _host_has_avx2_fma() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return all(f" {x}" in flags for x in ("avx2", "fma", "f16c"))


def _first_line(cmd: list) -> str:
    """First line of ``cmd``'s output ('' when it cannot run)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else ""


def _tool(name: str) -> dict:
    """Where ``name`` resolves on PATH and its ``--version`` first line."""
    path = shutil.which(name) or name
    return {"command": name, "path": os.path.realpath(path) if os.path.exists(path) else path,
            "version": _first_line([path, "--version"])}


def build_info(compiler, with_cuda: bool) -> dict:
    """What builds the extension: C++ compiler and linker (as torch's BuildExtension calls them),
    nvcc and its host compiler (``CC``, nvcc's -ccbin) when CUDA is built, and the torch used."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, get_cxx_compiler

    linker = getattr(compiler, "linker_so_cxx", None) or getattr(compiler, "linker_so", None) or ["?"]
    info = {"cxx": _tool(get_cxx_compiler()), "linker": _tool(linker[0]), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "with_cuda": with_cuda,
            "env": {k: os.environ[k] for k in ("CC", "CXX", "LDSHARED", "CUDA_HOME", "TORCH_CUDA_ARCH_LIST")
                    if k in os.environ}}
    if with_cuda:
        nvcc = os.path.join(CUDA_HOME or "/usr/local/cuda", "bin", "nvcc")
        lines = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines() \
            if os.path.exists(nvcc) else []
        info["nvcc"] = {"path": nvcc, "version": lines[-1] if lines else ""}
        info["nvcc_host_compiler"] = _tool(os.environ.get("CC", "gcc"))
    return info


def _recording(base):
    """``base`` (torch's BuildExtension) that also writes _build_info.json next to each built library."""

    class RecordingBuildExt(base):
        def run(self):
            super().run()  # with --inplace, setuptools copies the library into the source tree here
            for ext in self.extensions:
                with_cuda = any(src.endswith(".cu") for src in ext.sources)
                folder = os.path.dirname(self.get_ext_fullpath(ext.name))
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, "_build_info.json"), "w") as f:
                    json.dump(build_info(self.compiler, with_cuda), f, indent=1)

    return RecordingBuildExt


def _extensions():
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:  # metadata-only operations (e.g. sdist without torch)
        return [], {}

    from packaging.version import Version

    debug = _flag("L2KD_DEBUG")
    # torch >= 2.13 headers need C++20 (bit-field initialisers); older ones build as C++17 (CUDA 12 / older gcc users).
    std = "-std=c++20" if Version(torch.__version__.split("+")[0]) >= Version("2.13") else "-std=c++17"
    cpp_sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    want_cuda = not _flag("L2KD_CPU_ONLY") and (
        _flag("FORCE_CUDA") or (torch.version.cuda is not None and CUDA_HOME is not None)
    )

    cxx = ["-O0", "-g"] if debug else ["-O3"]
    cxx += [std, "-fopenmp", "-Wall", "-Werror", "-Wno-unknown-pragmas"]
    if not debug and not _flag("L2KD_PORTABLE") and _host_has_avx2_fma():
        # at::vec::Vectorized picks its AVX2 specialisation from CPU_CAPABILITY_AVX2.
        cxx += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DL2KD_AVX2=1"]
    nvcc = ["-O0", "-g", "-G"] if debug else ["-O3"]
    nvcc += [std, "--expt-relaxed-constexpr", "-Werror=all-warnings", "-Xcompiler=-Wall"]

    include_dirs = [os.path.join(ROOT, "csrc")]
    kwargs = dict(
        name="l2kd._C",
        include_dirs=include_dirs,
        extra_link_args=["-fopenmp"],
    )
    if want_cuda:
        ext = CUDAExtension(
            sources=cpp_sources + cuda_sources,
            extra_compile_args={"cxx": cxx + ["-DL2KD_WITH_CUDA=1"], "nvcc": nvcc + ["-DL2KD_WITH_CUDA=1"]},
            **kwargs,
        )
    else:
        ext = CppExtension(sources=cpp_sources, extra_compile_args={"cxx": cxx}, **kwargs)
    return [ext], {"build_ext": _recording(BuildExtension.with_options(use_ninja=True))}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["l2kd", "l2kd.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    include_package_data=True,
)
