"""The background state writer: the same bytes as a synchronous save, a snapshot taken at
submission, one pending write per file, a failed write raised in the caller naming the file,
and a tiny run's bytes per epoch in its task summary."""
from __future__ import annotations

import errno
import json
import os
import threading
import time

import pytest
import torch

from l2kd import async_writer
from l2kd.async_writer import StateWriter, StateWriteError, snapshot
from l2kd.checkpoint import load_state_file, save_epoch_model, save_resume_state
from l2kd.optim import OriginalAdamW


def _trained(tiny_model):
    opt = OriginalAdamW(tiny_model.parameters(), lr=1e-3)
    ids = torch.randint(0, 100, (2, 8))
    tiny_model(ids, labels=ids).loss.backward()
    opt.step()
    return opt


def test_same_bytes_as_a_synchronous_save(tiny_model, tmp_path):
    opt = _trained(tiny_model)
    state = {"model": tiny_model.state_dict(), "optimizer": opt.state_dict(), "step": 3, "losses": [1.5, 2.0]}
    sync, bg = tmp_path / "sync", tmp_path / "bg"
    save_epoch_model(str(sync), 1, tiny_model.state_dict())
    save_resume_state(str(sync), state)
    w = StateWriter()
    save_epoch_model(str(bg), 1, tiny_model.state_dict(), w)
    save_resume_state(str(bg), state, w, label=1)
    w.close()
    for name in ("model-1", "checkpoint.pt"):
        assert (sync / name).read_bytes() == (bg / name).read_bytes(), name  # tied weights stay one storage
    got = load_state_file(str(bg / "checkpoint.pt"))
    assert all(torch.equal(got["model"][k], v) for k, v in tiny_model.state_dict().items())
    assert w.written[1] == sum(os.path.getsize(bg / n) for n in ("model-1", "checkpoint.pt"))


def test_training_after_submit_does_not_change_what_is_written(tiny_model, tmp_path):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    gate = threading.Event()
    real = async_writer.atomic_torch_save

    def slow(path, obj):  # the write starts only after the parameters have changed
        gate.wait(10)
        real(path, obj)

    w = StateWriter()
    try:
        async_writer.atomic_torch_save = slow
        w.submit(str(tmp_path / "model-1"), tiny_model.state_dict(), 1)
        with torch.no_grad():
            for p in tiny_model.parameters():
                p.add_(1.0)
        gate.set()
        w.close()
    finally:
        async_writer.atomic_torch_save = real
    got = torch.load(tmp_path / "model-1", weights_only=True)
    assert all(torch.equal(got[k], before[k]) for k in before)
    assert not all(torch.equal(v, before[k]) for k, v in tiny_model.state_dict().items())


def test_snapshot_keeps_shared_storages_and_views():
    flat = torch.arange(10.0)
    obj = {"a": flat[:4], "b": flat[4:].view(2, 3), "c": (flat, 7, "x")}
    got = snapshot(obj)
    assert got["a"].untyped_storage().data_ptr() == got["b"].untyped_storage().data_ptr() != flat.data_ptr()
    assert got["b"].storage_offset() == 4 and torch.equal(got["b"], obj["b"]) and got["c"][1:] == (7, "x")


def test_newer_state_supersedes_an_unstarted_one_but_epoch_models_are_all_written(tmp_path, monkeypatch):
    gate, order = threading.Event(), []
    real = async_writer.atomic_torch_save

    def record(path, obj):
        gate.wait(10)
        order.append((os.path.basename(path), obj))
        real(path, obj)

    monkeypatch.setattr(async_writer, "atomic_torch_save", record)
    w = StateWriter()
    w.submit(str(tmp_path / "model-1"), {"v": torch.tensor(1)})  # taken by the worker, held at the gate
    for i in range(2, 5):
        w.submit(str(tmp_path / "checkpoint.pt"), {"v": torch.tensor(i)})
        w.submit(str(tmp_path / f"model-{i}"), {"v": torch.tensor(i)})
    gate.set()
    w.wait()
    names = [n for n, _ in order]
    assert names.count("checkpoint.pt") <= 2 and sorted(n for n in names if n != "checkpoint.pt") == [
        "model-1", "model-2", "model-3", "model-4"]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["v"].item() == 4  # the newest
    w.close()


def test_a_failed_write_is_raised_in_the_caller_naming_the_file(tmp_path, monkeypatch):
    def broken(path, obj):
        raise RuntimeError("disk says no")

    monkeypatch.setattr(async_writer, "atomic_torch_save", broken)
    w = StateWriter()
    target = str(tmp_path / "checkpoint.pt")
    w.submit(target, {"v": torch.tensor(1)})
    with pytest.raises(StateWriteError) as e:
        w.wait()
    assert e.value.filename == target and target in str(e.value) and "disk says no" in str(e.value)
    w.submit(target, {"v": torch.tensor(2)})  # the error was raised once; the next submission goes on
    deadline = time.time() + 20
    with pytest.raises(StateWriteError) as e:  # ... and its failure is raised by a later submission
        while time.time() < deadline:
            w.submit(str(tmp_path / "model-1"), {"v": torch.tensor(3)})
            time.sleep(0.01)
    assert e.value.filename in (target, str(tmp_path / "model-1"))
    w.submit(str(tmp_path / "model-2"), {"v": torch.tensor(4)})
    with pytest.raises(StateWriteError) as e:
        w.close()  # a failure after the last submission: the wait raises it
    assert e.value.filename == str(tmp_path / "model-2")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_folder_is_reported_at_the_wait(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    w = StateWriter()
    try:
        w.submit(str(folder / "model-1"), {"v": torch.tensor(1)})
        with pytest.raises(OSError) as e:
            w.close()
        assert str(folder / "model-1") in str(e.value)
    finally:
        folder.chmod(0o700)
    assert os.listdir(folder) == []


def test_the_wait_drains_every_write(tmp_path):
    w = StateWriter()
    for i in range(1, 6):
        w.submit(str(tmp_path / f"model-{i}"), {"v": torch.full((1000,), float(i))}, i)
    w.wait()
    assert sorted(os.listdir(tmp_path)) == [f"model-{i}" for i in range(1, 6)]
    assert all(w.written[i] == os.path.getsize(tmp_path / f"model-{i}") for i in range(1, 6))
    w.close()


def test_a_run_reports_its_bytes_per_epoch(tmp_path, data_dir, caplog):
    from l2kd import train as train_cli

    argv = ["--data_dir", data_dir, "--model_dir_root", str(tmp_path), "--model_name", "tiny-gpt2",
            "--seq_train_type", "finetune", "--tasks", "rnnlg.rest", "--n_train_epochs", "2",
            "--train_batch_size", "8", "--max_train_examples", "8", "--learning_rate", "1e-3", "--quiet",
            "--seed", "5"]
    assert train_cli.main(argv) == 0
    tdir = os.path.join(tmp_path, "tiny-gpt2", "finetune", "rnnlg.rest_seed_5", "rnnlg.rest")
    summary = json.load(open(os.path.join(tdir, "l2kd_task.json")))
    written = summary["state_bytes_written"]
    # checkpoint.pt is gone (the task finished); each epoch wrote its model and a checkpoint at least as big
    sizes = [os.path.getsize(os.path.join(tdir, f"model-{e}")) for e in (1, 2)]
    assert len(written["per_epoch"]) == 2 and written["total"] == sum(written["per_epoch"])
    assert all(b > 2 * s for b, s in zip(written["per_epoch"], sizes))
    assert not os.path.exists(os.path.join(tdir, "checkpoint.pt"))


def _full_disk_error(target: str) -> OSError:
    """The error a background write of ``target`` raises on the (simulated) full disk, after
    checking it says so, names the file, and left neither the file nor a temp file behind."""
    w = StateWriter()
    w.submit(target, {"v": torch.zeros(100)})
    with pytest.raises(OSError) as e:
        w.close()
    assert e.value.errno == errno.ENOSPC and target in str(e.value)
    assert os.listdir(os.path.dirname(target)) == []
    return e.value


def test_a_full_disk_is_reported_as_one_naming_the_file(tmp_path, monkeypatch):
    from l2kd.loop.failures import fatal_message

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("l2kd.io_utils.os.fsync", full)
    target = str(tmp_path / "checkpoint.pt")
    err = _full_disk_error(target)
    msg = fatal_message(err, str(tmp_path))
    assert msg.startswith("no space left on the device") and target in msg


def test_torch_saves_unexpected_pos_on_a_full_disk_is_reported_as_a_full_disk(tmp_path, monkeypatch):
    """torch.save fails on a full disk with RuntimeError("unexpected pos ..."); the disk is only
    full while the partial temp file exists, so the free space must be read before deleting it."""
    real_statvfs = os.statvfs

    class Vfs:
        def __init__(self, free):
            self.f_bavail, self.f_frsize = free, 1

    def statvfs(folder):
        temps = [f for f in os.listdir(folder) if f.startswith(".tmp-")]
        return Vfs(0) if temps else Vfs(10 * 2**30) if folder == str(tmp_path) else real_statvfs(folder)

    def save(obj, f):
        f.write(b"x" * 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 55296 vs 55190")

    monkeypatch.setattr("l2kd.io_utils.os.statvfs", statvfs)
    monkeypatch.setattr("l2kd.io_utils.torch.save", save)
    assert "unexpected pos" in str(_full_disk_error(str(tmp_path / "model-2")))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_gpu_state_is_copied_into_pinned_memory_and_written_whole(tmp_path):
    state = {"w": torch.randn(1000, 100, device="cuda")}
    want = state["w"].cpu()
    w = StateWriter()
    w.submit(str(tmp_path / "model-1"), state)
    state["w"].add_(1.0)  # queued after the copy on the same stream
    w.close()
    assert torch.equal(torch.load(tmp_path / "model-1", weights_only=True)["w"], want)
    assert snapshot(state)["w"].is_pinned()
