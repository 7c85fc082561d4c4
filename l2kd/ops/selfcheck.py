"""Does a bad argument to a compiled op raise, or kill the process?

    python -m l2kd.ops.selfcheck [--allow-missing] [--timeout 120]

A child Python process calls ``torch.ops.l2kd.gem_project`` with mismatched shapes (and, when a
GPU is visible, the same on CUDA tensors). A healthy build raises ``RuntimeError`` from the C++
argument check. If the child dies by a signal instead, C++ exceptions do not cross from the
extension into torch: typically the extension was compiled or linked by another compiler than
the one torch was built with (a different libstdc++ / libgcc). The report names both: the one in
``l2kd/_build_info.json`` (written by setup.py) and the GCC that ``torch.__config__.show()``
records, and the command that rebuilds with a matching one. Exit status: 0 when the call raised,
1 otherwise (crash, hang, no error, or no extension unless ``--allow-missing``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

# The child's program: prints one PROBE line per call and exits 0, or exits 3 without the extension.
PROBE_CODE = r"""
import sys, torch
from l2kd.ops import has_compiled
if not has_compiled("gem_project"):
    print("PROBE missing: l2kd._C is not built or does not load"); sys.exit(3)
devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
for dev in devices:
    try:
        torch.ops.l2kd.gem_project(torch.randn(5, device=dev), torch.randn(2, 6, device=dev), 0.5, 1e-3)
    except RuntimeError as exc:
        print(f"PROBE raised on {dev}: {str(exc).splitlines()[0]}", flush=True)
    else:
        print(f"PROBE no-error on {dev}: a call with mismatched shapes returned normally", flush=True)
        sys.exit(4)
"""

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class ProbeResult:
    """What the child did: ``status`` is raised, crashed, hung, no-error, missing or failed."""

    status: str
    returncode: Optional[int]
    output: str
    signal_name: str = ""


def run_probe(command: Sequence[str], timeout: float = 120.0) -> ProbeResult:
    """Run ``command`` (a child that makes the failing call) and classify how it ended."""
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_PARENT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return ProbeResult("hung", None, out)
    out = proc.stdout + proc.stderr
    rc = proc.returncode
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return ProbeResult("crashed", rc, out, name)
    if rc == 0:
        return ProbeResult("raised", rc, out)
    if rc == 3:
        return ProbeResult("missing", rc, out)
    if rc == 4:
        return ProbeResult("no-error", rc, out)
    return ProbeResult("failed", rc, out)


def probe_command(code: str = PROBE_CODE) -> List[str]:
    """The child: this interpreter with faulthandler on (a crash prints the Python stack)."""
    return [sys.executable, "-X", "faulthandler", "-c", code]


def build_info_path() -> Optional[str]:
    """``_build_info.json`` next to the compiled extension, without loading the extension."""
    try:
        spec = importlib.util.find_spec("l2kd._C")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return None
    return os.path.join(os.path.dirname(spec.origin), "_build_info.json")


def read_build_info(path: Optional[str]) -> Dict[str, object]:
    """The record setup.py wrote ({} when absent or unreadable)."""
    if not path or not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def torch_compiler(config: Optional[str] = None) -> str:
    """The compiler torch records in ``torch.__config__.show()`` (e.g. "GCC 13.3"), '' if none."""
    if config is None:
        import torch

        config = torch.__config__.show()
    m = re.search(r"\b(GCC|Clang|clang)\s+(\d+(?:\.\d+)*)", config)
    return f"{m.group(1)} {m.group(2)}" if m else ""


def _version(text: str) -> str:
    """The last dotted version number in a ``--version`` line ('' if none)."""
    found = re.findall(r"\d+\.\d+(?:\.\d+)?", text or "")
    return found[-1] if found else ""


def _same_major_minor(a: str, b: str) -> bool:
    return a.split(".")[:2] == b.split(".")[:2]


def diagnose(result: ProbeResult, info: Dict[str, object], torch_cc: str) -> str:
    """The report for a child that did not raise: what happened, the likely cause, the fix."""
    if result.status == "missing":
        return ("l2kd self-check: the compiled extension l2kd._C is not built (or does not load); "
                "build it with `python setup.py build_ext --inplace`.")
    how = {
        "crashed": f"died by {result.signal_name} instead of raising RuntimeError",
        "hung": "did not finish (timed out) instead of raising RuntimeError",
        "no-error": "returned normally although its arguments are invalid",
        "failed": f"exited with status {result.returncode} instead of raising RuntimeError",
    }[result.status]
    cxx = info.get("cxx") or {}
    linker = info.get("linker") or {}
    lines = [f"l2kd self-check FAILED: a compiled op called with bad arguments {how}.", ""]
    if cxx:
        lines.append(f"  extension compiled by: {cxx.get('path')} ({cxx.get('version') or 'version unknown'})")
        lines.append(f"  extension linked by:   {linker.get('path')} ({linker.get('version') or 'version unknown'})")
        if info.get("nvcc"):
            host = info.get("nvcc_host_compiler") or {}
            lines.append(f"  nvcc: {info['nvcc'].get('version')}; "
                         f"host compiler {host.get('path')} ({host.get('version')})")
    else:
        lines.append("  extension compiled by: unknown (no l2kd/_build_info.json: built before setup.py recorded it)")
    lines.append(f"  torch was built with:  {torch_cc or 'unknown (torch.__config__.show() names no compiler)'}")
    ours = _version(str(cxx.get("version", "")))
    theirs = _version(torch_cc)
    if result.status == "crashed":
        lines.append("")
        if ours and theirs and not _same_major_minor(ours, theirs):
            lines.append(f"  Likely cause: the extension's compiler ({ours}) is not torch's ({torch_cc}); "
                         "a C++ exception thrown by the argument check does not unwind through the other "
                         "runtime and the process dies.")
        else:
            lines.append("  Likely cause: a C++ exception from the argument check cannot unwind between the "
                         "extension and torch (compiler, libstdc++ or linker-flag mismatch such as "
                         "-Bsymbolic-functions).")
    major = theirs.split(".")[0] if theirs else ""
    candidate = (shutil.which(f"g++-{major}") if major else None) or f"g++-{major or 'N'}"
    cc = candidate.replace("g++", "gcc")
    cuda = " FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=<arch>" if info.get("with_cuda") else ""
    lines += ["", "  Rebuild with a compiler matching torch's, e.g.:",
              f"    CXX={candidate} CC={cc}{cuda} python setup.py build_ext --inplace", ""]
    tail = result.output.strip().splitlines()[-15:]
    if tail:
        lines.append("  child output (last lines):")
        lines += [f"    {t}" for t in tail]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None, command: Optional[Sequence[str]] = None) -> int:
    """Run the probe; print the verdict (and the diagnosis on failure); return the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--allow-missing", action="store_true", help="exit 0 when the extension is not built")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds the child may take")
    ap.add_argument("--probe-code", default=None, help=argparse.SUPPRESS)  # tests: another child program
    args = ap.parse_args(argv)
    cmd = list(command) if command is not None else probe_command(args.probe_code or PROBE_CODE)
    result = run_probe(cmd, args.timeout)
    if result.status == "raised":
        detail = " / ".join(line[len("PROBE "):] for line in result.output.splitlines() if line.startswith("PROBE "))
        print(f"l2kd self-check OK: a bad argument raises RuntimeError ({detail or 'child exited 0'})")
        return 0
    if result.status == "missing" and args.allow_missing:
        print("l2kd self-check skipped: l2kd._C is not built")
        return 0
    print(diagnose(result, read_build_info(build_info_path()), torch_compiler()), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
