"""Loading of the compiled extension ``l2kd._C`` and the ``backend()`` report.

Importing ``l2kd._C`` registers the ``torch.ops.l2kd.*`` operators. If it is missing
(not built, or built for another torch), every op runs its pure-PyTorch reference
and exactly one warning says so.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

_loaded: Optional[bool] = None
_error: Optional[str] = None


def extension_loaded() -> bool:
    """Import ``l2kd._C`` once; return whether the compiled operators are available."""
    global _loaded, _error
    if _loaded is None:
        try:
            from l2kd import _C  # noqa: F401  (import registers the ops)

            _loaded = True
        except (ImportError, OSError) as exc:  # OSError: undefined symbol / ABI mismatch
            _loaded, _error = False, f"{type(exc).__name__}: {exc}"
            warnings.warn(
                "l2kd: compiled extension l2kd._C is not available "
                f"({_error}); running the pure-PyTorch reference ops. "
                "Build it with `python setup.py build_ext --inplace` or `pip install -e .`.",
                RuntimeWarning,
                stacklevel=3,
            )
    return _loaded


def has_compiled(op: str) -> bool:
    """True when ``torch.ops.l2kd.<op>`` is registered by the compiled extension."""
    return extension_loaded() and hasattr(torch.ops.l2kd, op)


def _cuda_registered() -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("l2kd::kd_loss", "CUDA")
    except Exception:  # pragma: no cover - private API moved
        return False


def backend() -> str:
    """Which implementation runs: ``"compiled"`` (C++ CPU, plus CUDA if built) or ``"reference"``."""
    if not extension_loaded():
        return "reference"
    return "compiled+cuda" if _cuda_registered() else "compiled"
