"""Fatal errors end as one message on stderr and in log_train.txt, exit status 1, with what to
do next; nothing half-written looks finished; finished tasks are kept."""
from __future__ import annotations

import errno
import glob
import os
import subprocess
import sys
import textwrap

import pytest

from faults_helpers import argv, finished_models, run_dir, train
from l2kd.io_utils import atomic_write_text
from l2kd.loop.failures import fatal_message


def _custom(tmp_path, body: str, name: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return f"{path}:{name.title().replace('_', '')}"


def test_atomic_write_on_a_full_disk_leaves_no_temp_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("l2kd.io_utils.os.fsync", full)
    target = tmp_path / "metrics.json"
    with pytest.raises(OSError) as e:
        atomic_write_text(str(target), "{}")
    assert e.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []  # neither the target nor a .tmp- file
    msg = fatal_message(e.value, str(tmp_path))
    assert msg.startswith("no space left on the device") and "re-run the same command" in msg


@pytest.fixture()
def small_disk(tmp_path):
    """A 300 MiB tmpfs (needs root and mount permission; skipped elsewhere)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", str(mnt)], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc}): the simulated ENOSPC test covers the writer")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


FILL = '''
    import os
    from l2kd.strategies import Strategy

    class FillDisk(Strategy):
        """finetune, but before task 2 of the first run the disk is filled up to its last 64 KiB."""
        name = "fill_disk"

        def before_task(self, ctx, model):
            if ctx.index == 1 and not os.path.exists({once!r}):
                open({once!r}, "w").close()
                st = os.statvfs({mount!r})
                with open(os.path.join({mount!r}, "filler"), "wb") as f:
                    f.write(b"x" * (st.f_bavail * st.f_frsize - 65536))
            return super().before_task(ctx, model)
'''


@pytest.mark.slow
def test_full_disk_is_one_message_and_the_same_command_resumes(small_disk, tmp_path, data_dir, capsys):
    spec = _custom(tmp_path, FILL.format(mount=str(small_disk), once=str(tmp_path / "filled")), "fill_disk")
    root = small_disk / "runs"
    args = argv(data_dir, root, "--custom_strategy", spec)
    code, err = train(args, capsys)
    rdir = os.path.join(str(root), "tiny-gpt2", "fill_disk", "rnnlg.rest_rnnlg.tv_seed_5")
    assert code == 1
    assert err.count("l2kd.train: error: no space left on the device") == 1 and "Traceback" not in err
    assert "re-run the same command" in err
    assert not glob.glob(os.path.join(rdir, "**", ".tmp-*"), recursive=True)  # the temp file was removed
    assert not os.path.exists(os.path.join(rdir, "rnnlg.tv", "model-finish"))
    before = finished_models(rdir)
    assert list(before) == ["rnnlg.rest"]
    log = open(os.path.join(rdir, "log_train.txt")).read()
    assert "ERROR fatal: no space left on the device" in log
    os.remove(small_disk / "filler")  # the user frees space and runs the same command
    code, err = train(args, capsys)
    assert code == 0, err
    after = finished_models(rdir)
    assert after["rnnlg.rest"] == before["rnnlg.rest"] and "rnnlg.tv" in after


NAN = '''
    from l2kd.strategies import Strategy

    class NanLoss(Strategy):
        """finetune whose loss is NaN from task 2 on."""
        name = "nan_loss"

        def loss(self, ctx, model, batch, weight):
            loss, logs = super().loss(ctx, model, batch, weight)
            return (loss * float("nan") if ctx.index == 1 else loss), logs
'''


@pytest.mark.slow
def test_diverged_run_is_one_message_in_the_log(tmp_path, data_dir, capsys):
    spec = _custom(tmp_path, NAN, "nan_loss")
    root = tmp_path / "runs"
    code, err = train(argv(data_dir, root, "--custom_strategy", spec, "--n_train_epochs", "3"), capsys)
    rdir = os.path.join(str(root), "tiny-gpt2", "nan_loss", "rnnlg.rest_rnnlg.tv_seed_5")
    assert code == 1
    assert err.count("consecutive non-finite losses") == 1 and "lower --learning_rate" in err
    log = open(os.path.join(rdir, "log_train.txt")).read()
    assert "ERROR fatal: [rnnlg.tv] 5 consecutive non-finite losses" in log
    assert list(finished_models(rdir)) == ["rnnlg.rest"]


def test_missing_teacher_is_one_message_on_stderr_and_in_the_log(tmp_path, data_dir):
    empty = tmp_path / "teachers"
    empty.mkdir()
    root = tmp_path / "runs"
    p = subprocess.run([sys.executable, "-m", "l2kd.train", *argv(data_dir, root, "--distil", "--teacher_dir",
                                                                    str(empty))],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 1
    want = f"--teacher_dir {empty}: no model-finish for task rnnlg.rest"
    assert p.stderr.count(want) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert f"ERROR fatal: {want}" in open(os.path.join(run_dir(root), "log_train.txt")).read()
    assert not glob.glob(os.path.join(str(root), "**", "model-*"), recursive=True)
