"""Stand-in for the GPUtil package, answered from torch (see README.md in this folder)."""
import os
from dataclasses import dataclass


@dataclass
class GPU:
    id: int
    name: str
    memoryTotal: float  # MiB, as GPUtil reports it
    memoryUsed: float = 0.0
    load: float = 0.0


def getGPUs():
    import torch

    if not torch.cuda.is_available():
        return []
    fixed = os.environ.get("PARITY_MEMORY_MIB")
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append(GPU(i, props.name, float(fixed) if fixed else props.total_memory / 2**20))
    return out


def getAvailable(order="first", limit=1, maxLoad=0.5, maxMemory=0.5, memoryFree=0, includeNan=False,
                 excludeID=(), excludeUUID=()):
    """The first ``limit`` devices, load and memory use not checked (the harness owns the GPU)."""
    return [g.id for g in getGPUs() if g.id not in excludeID][:limit]
