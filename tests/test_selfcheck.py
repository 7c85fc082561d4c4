"""l2kd.ops.selfcheck: a child that dies instead of raising is diagnosed; the real build passes."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from l2kd.ops import has_compiled
from l2kd.ops import selfcheck

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEGFAULT = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
INFO = {"cxx": {"path": "/opt/gcc/bin/g++", "version": "g++ (GCC) 14.2.0"},
        "linker": {"path": "/opt/gcc/bin/g++", "version": "g++ (GCC) 14.2.0"}, "with_cuda": True}


def test_segfaulting_child_is_diagnosed(capsys):
    rc = selfcheck.main(["--probe-code", SEGFAULT, "--timeout", "60"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "died by SIGSEGV instead of raising RuntimeError" in err
    assert "torch was built with:" in err
    assert "extension compiled by:" in err
    assert "CXX=" in err and "setup.py build_ext --inplace" in err


def test_diagnosis_names_both_compilers_when_they_differ():
    crashed = selfcheck.ProbeResult("crashed", -11, "Fatal Python error: Segmentation fault", "SIGSEGV")
    text = selfcheck.diagnose(crashed, INFO, "GCC 13.3")
    assert "/opt/gcc/bin/g++ (g++ (GCC) 14.2.0)" in text
    assert "extension's compiler (14.2.0) is not torch's (GCC 13.3)" in text
    assert "FORCE_CUDA=1" in text and "gcc-13" in text
    assert "Segmentation fault" in text  # the child's own output is quoted


def test_other_endings_are_classified():
    assert selfcheck.run_probe([sys.executable, "-c", "import sys; sys.exit(4)"]).status == "no-error"
    assert selfcheck.run_probe([sys.executable, "-c", "import sys; sys.exit(3)"]).status == "missing"
    assert selfcheck.run_probe([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5).status == "hung"
    assert selfcheck.main(["--probe-code", "import sys; sys.exit(3)", "--allow-missing"]) == 0


def test_torch_compiler_is_read_from_the_config():
    assert selfcheck.torch_compiler("PyTorch built with:\n  - GCC 13.3\n  - C++ Version: 202002") == "GCC 13.3"
    assert selfcheck.torch_compiler("PyTorch built with:\n  - C++ Version: 202002") == ""


@pytest.mark.skipif(not has_compiled("gem_project"), reason="l2kd._C is not built")
def test_real_build_passes():
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-m", "l2kd.ops.selfcheck"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "self-check OK" in out.stdout and "raised on cpu" in out.stdout
