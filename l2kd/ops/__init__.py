"""Python face of l2kd's fused operators.

Each op has a public function (compiled kernel when available, reference otherwise),
a pure-PyTorch ``*_ref`` (the fallback and the test oracle), and, when the extension is
built, ``register_fake`` / ``register_autograd`` registrations. ``backend()`` tells
which implementation runs.
"""
from l2kd.ops._extension import backend, extension_loaded, has_compiled
from l2kd.ops.gem_project import gem_project, gem_project_ref
from l2kd.ops.kd_loss import kd_loss, kd_loss_ref
from l2kd.ops.linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_ref
from l2kd.ops.linear_kd_loss import linear_kd_loss, linear_kd_loss_ref
from l2kd.ops.top_k_sample import top_k_sample, top_k_sample_ref

__all__ = [
    "backend",
    "extension_loaded",
    "has_compiled",
    "kd_loss",
    "kd_loss_ref",
    "top_k_sample",
    "top_k_sample_ref",
    "gem_project",
    "gem_project_ref",
    "linear_cross_entropy",
    "linear_cross_entropy_ref",
    "linear_kd_loss",
    "linear_kd_loss_ref",
]
