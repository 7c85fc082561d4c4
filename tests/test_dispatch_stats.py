import torch

from l2kd.dispatch_stats import DispatchCounter


def test_counts_scalar_reads_and_ops():
    x = torch.randn(8)
    with DispatchCounter() as c:
        y = (x * 2).sum()
        _ = y.item()
        _ = bool(y > 0)
        z = x + 1
    assert c.host_reads == 2
    assert c.ops["aten.mul.Tensor"] == 1 and c.ops["aten.add.Tensor"] == 1
    assert c.total >= 5
    assert z.shape == x.shape


def test_no_reads_when_values_stay_tensors():
    x = torch.randn(4, 4, requires_grad=True)
    with DispatchCounter() as c:
        loss = (x @ x).square().mean()
        loss.backward()
        torch.where(torch.isfinite(loss), loss, torch.zeros_like(loss))
    assert c.host_reads == 0
    assert c.summary()["ops"] == c.total > 0
