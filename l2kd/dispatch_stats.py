"""Counting what a block of code asks of the device: ATen operations dispatched and host reads.

On a GPU every host read (``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()`` of a device
tensor) waits for every queued kernel, so a training step is judged by how many it makes. The
same code on CPU dispatches the same operations and makes the same reads, so this count is
measurable without a GPU. ``aten._local_scalar_dense`` is the operation behind every scalar
read; ``.tolist()`` and ``.cpu()`` of a device tensor show up as copies to the CPU.
"""
from __future__ import annotations

from collections import Counter
from typing import Dict

import torch
from torch.utils._python_dispatch import TorchDispatchMode

HOST_READ = "aten._local_scalar_dense.default"


class DispatchCounter(TorchDispatchMode):
    """``with DispatchCounter() as c: ...`` counts every ATen operation the block dispatches
    (``c.ops``, by name) and its host reads (``c.host_reads``: scalar reads, plus copies of a
    non-CPU tensor to the CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()
        self.device_to_host = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops[str(func)] += 1
        out = func(*args, **kwargs)
        if func.overloadpacket in (torch.ops.aten._to_copy, torch.ops.aten.copy_):
            src = args[1] if func.overloadpacket is torch.ops.aten.copy_ else args[0]
            dst = args[0] if func.overloadpacket is torch.ops.aten.copy_ else out
            if (isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor)
                    and src.device.type != "cpu" and dst.device.type == "cpu"):
                self.device_to_host += 1
        return out

    @property
    def total(self) -> int:
        """ATen operations dispatched in the block."""
        return sum(self.ops.values())

    @property
    def host_reads(self) -> int:
        """Scalar reads plus device-to-host copies (each one a synchronisation on a GPU)."""
        return self.ops[HOST_READ] + self.device_to_host

    def summary(self) -> Dict[str, int]:
        """``{"ops": ..., "host_reads": ...}`` for a benchmark record."""
        return {"ops": self.total, "host_reads": self.host_reads}
