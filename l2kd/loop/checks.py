"""Checks that run before the first training step, so that a run which can only produce
garbage, or which was asked for contradictory things, says so before hours are spent.

* :func:`preflight_distil`: a user's Seq-KD file is read with the other data files.
* :func:`check_skip_tasks`: ``--skip_tasks`` needs a finished model of every skipped task.
* :func:`check_tokenizer` / :func:`check_encoded`: the tokenizer belongs to the model, the
  special tokens have ids of their own, and the examples encode to tokens.
* :func:`log_config_warnings`: flag combinations that run but do not do what they suggest.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Sequence

from l2kd.config import ConfigError, TrainConfig
from l2kd.data.qa_format import Encoded
from l2kd.data.squad import load_squad_file
from l2kd.distillation import user_distil_file
from l2kd.layout import MODEL_FINISH, task_dir
from l2kd.tokenizer import ANS, EOS, PAD, SEP, UNK, SpecialIds, gen_token_for

log = logging.getLogger("l2kd")
MIN_TOKENS = 2  # an example with fewer context+question+answer tokens carries nothing to learn


def preflight_distil(cfg: TrainConfig) -> Dict[str, str]:
    """With ``--seq_distil``: read every Seq-KD file the user put beside the data (one l2kd did
    not build) now, like the other data files. Returns task -> that file."""
    found: Dict[str, str] = {}
    if not cfg.seq_distil:
        return found
    for task in cfg.tasks:
        path = user_distil_file(cfg, task)
        if path:
            load_squad_file(path, task)
            found[task] = path
    return found


def check_skip_tasks(cfg: TrainConfig, rdir: str, plan: Sequence[Sequence[str]]) -> None:
    """``--skip_tasks`` loads the skipped stages' ``model-finish`` instead of training them (the
    stages of ``plan``, :func:`l2kd.layout.plan_stages`): each must exist (else
    :class:`ConfigError` naming the file), and under ``--unbound`` each skipped chunk must be
    one of the run's."""
    names = [t for stage in plan for t in stage]
    beyond = [t for t in cfg.skip_tasks if t not in names]
    if beyond:  # only possible under --unbound: fewer chunks than K
        raise ConfigError(f"--skip_tasks: {', '.join(beyond)} not a stage of this run (its stages: {' '.join(names)})")
    missing = []
    for stage in plan:
        if cfg.skip_tasks and set(stage) <= set(cfg.skip_tasks):
            path = os.path.join(task_dir(rdir, cfg.seq_train_type, stage[0]), MODEL_FINISH)
            if not os.path.isfile(path):
                missing.append(path)
    if missing:
        raise ConfigError(f"--skip_tasks: nothing to load for a skipped task: {', '.join(missing)} missing; train "
                          "those tasks first or leave them out of --skip_tasks")


def check_tokenizer(tok, n_rows: int, model_name: str) -> None:
    """The base tokenizer (before LAMOL's tokens) must cover the model's vocabulary: a smaller
    one (a model folder whose tokenizer did not load) would shrink the embedding to a few rows
    and encode every text to nothing."""
    if len(tok) < max(256, n_rows // 2):
        raise ValueError(
            f"--model_name {model_name}: the tokenizer has {len(tok)} tokens but the model's embedding has {n_rows} "
            "rows: it is not this model's tokenizer (a model folder without its tokenizer files?). Save the "
            "tokenizer into the folder (tokenizer.save_pretrained) or use a GPT-2 vocabulary model")


def check_special_ids(tok, ids: SpecialIds, tasks: Sequence[str], add_task_tokens: bool, model_name: str) -> None:
    """Each special token must be one token of its own, distinct from the others."""
    named = {EOS if tok.eos_token is None else tok.eos_token: ids.eos, ANS: ids.ans, PAD: ids.pad, UNK: ids.unk}
    if ids.sep >= 0:
        named[SEP] = ids.sep
    named.update({gen_token_for(t, add_task_tokens): ids.gen[t] for t in tasks})
    bad = [f"{name} -> {i}" for name, i in named.items()
           if not isinstance(i, int) or not 0 <= i < len(tok) or tok.convert_ids_to_tokens(i) != name]
    if bad or len(set(named.values())) != len(named):
        raise ValueError(f"--model_name {model_name}: the tokenizer cannot represent LAMOL's special tokens "
                         f"({', '.join(bad) or 'two tokens share an id'}); use a GPT-2 style (byte-level BPE) "
                         "tokenizer")


def check_encoded(examples: Sequence[Encoded], stage: str, model_name: str, n_tok: int,
                  source: Optional[str] = None) -> None:
    """Stop when most examples encode to (nearly) no tokens: training on them learns nothing and
    every score comes out 0."""
    if not examples:
        return
    special = 1  # cq ends with __ans__
    empty = sum(1 for e in examples if len(e.cq) - special + len(e.answer) < MIN_TOKENS)
    if empty * 2 > len(examples):
        where = f" ({source})" if source else ""
        raise ValueError(
            f"[{stage}] {empty} of {len(examples)} training examples{where} encode to fewer than {MIN_TOKENS} tokens "
            f"with the tokenizer of --model_name {model_name} ({n_tok} tokens): the tokenizer does not fit the data; "
            "nothing would be learnt. Check the tokenizer files of the model folder")


def config_warnings(cfg: TrainConfig) -> List[str]:
    """Flag combinations that are accepted but do less than they suggest (one line each)."""
    out = []
    replaying = cfg.traits.replays
    default_pct = TrainConfig.__dataclass_fields__["gen_lm_sample_percentage"].default
    if not replaying and cfg.gen_lm_sample_percentage != default_pct:
        out.append(f"--gen_lm_sample_percentage {cfg.gen_lm_sample_percentage} has no effect with --seq_train_type "
                   f"{cfg.seq_train_type} (it replays nothing; lll replays pseudo-samples, gem keeps memories)")
    if cfg.unbound and cfg.dynamic_epochs:
        out.append(f"--dynamic_epochs has no effect with --unbound {cfg.unbound}: every chunk trains "
                   f"--n_train_epochs {cfg.n_train_epochs} epochs (the original skips the dynamic epochs there too)")
    if cfg.traits.joint and cfg.dynamic_epochs:
        out.append(f"--dynamic_epochs has no effect with --seq_train_type {cfg.seq_train_type}: the joint stage trains "
                   f"--n_train_epochs {cfg.n_train_epochs} epochs (as the original)")
    if cfg.real_sample and cfg.distil:
        out.append("--real_sample with --distil: the replayed real examples of earlier tasks are learnt from their "
                   "gold answers (cross-entropy); only the current task is distilled from its teacher")
    return out


def log_config_warnings(cfg: TrainConfig, extra: Sequence[str] = ()) -> None:
    """Log :func:`config_warnings` and the caller's ``extra`` lines as warnings."""
    for line in list(extra) + config_warnings(cfg):
        log.warning("%s", line)
