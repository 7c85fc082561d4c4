"""``python -m l2kd.pretrain``: build the pretrained tiny GPT-2 base (see :mod:`l2kd.pretraining`).

Default: train the default recipe into the user's cache folder (resuming an interrupted
build), print the held-out perplexity and throughput, and compare the base's soft targets at
T=2 on the rnnlg.rest training answers with a randomly initialised model's. ``--ship`` also
writes the fp16 copy l2kd ships (``l2kd/resources/pretrained/tiny-gpt2-pretrained``), which
the demo loads and verifies instead of building.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
from typing import Dict, Optional, Sequence

import torch

from l2kd.pretraining import (DEFAULT_RECIPE, MINI_RECIPE, RECORD_FILE, SHIPPED_BASE, Recipe, build_base,
                              build_corpus, cache_root, read_record, recipe_checksum, save_base, verify_base)
from l2kd.runtime import setup_console_logging

log = logging.getLogger("l2kd")
COMPARE_TASK = "rnnlg.rest"


def compare_soft_targets(base_dir: str, recipe: Recipe, temperature: float = 2.0, n_examples: int = 512,
                         seed: int = 0) -> Dict[str, Dict[str, float]]:
    """Soft-target statistics (:func:`l2kd.diagnostics.soft_target_stats`) of the built base and
    of a random-init model of the same architecture on rnnlg.rest's bundled training answers,
    each resized for LAMOL's special tokens as the training loop does."""
    from transformers import GPT2LMHeadModel

    from l2kd.data import bundled_data_dir
    from l2kd.data.loading import load_task_examples
    from l2kd.diagnostics import soft_target_stats
    from l2kd.model import context_length, load_model_dir, resize_for_tokenizer
    from l2kd.tokenizer import add_special_tokens, load_base_tokenizer

    tok = load_base_tokenizer("tiny-gpt2")
    ids = add_special_tokens(tok, [COMPARE_TASK], False, False)
    out = {}
    torch.manual_seed(seed)
    models = {"random_init": GPT2LMHeadModel(recipe.model_config()), "pretrained": load_model_dir(base_dir)}
    for name, model in models.items():
        resize_for_tokenizer(model, len(tok))
        exs = load_task_examples(bundled_data_dir(), COMPARE_TASK, "train", tok, ids, context_length(model),
                                 n_examples)
        out[name] = soft_target_stats(model, exs, ids, temperature, max_examples=n_examples)
    return out


def export_half(src: str, dest: str) -> Dict[str, object]:
    """Write the fp16 copy of the build in ``src`` into ``dest`` (replaced), with its record."""
    from l2kd.model import load_model_dir

    record = read_record(src)
    if record is None:
        raise FileNotFoundError(f"{src}: no finished build ({RECORD_FILE} missing)")
    model = load_model_dir(src)
    tmp = dest.rstrip("/") + ".tmp-export"
    shutil.rmtree(tmp, ignore_errors=True)
    save_base(model, tmp, {**record, "exported_from": "fp32 build, weights cast to float16"}, half=True)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)  # the folder appears complete or not at all
    return read_record(dest) or {}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m l2kd.pretrain", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="", help="build folder (default: the cache folder of the recipe's checksum, "
                   "under $XDG_CACHE_HOME/l2kd/pretrained or ~/.cache/l2kd/pretrained)")
    p.add_argument("--ship", action="store_true",
                   help=f"also write the fp16 copy l2kd ships and the demo loads ({SHIPPED_BASE})")
    p.add_argument("--corpus_from", default="", metavar="RAW_DIR",
                   help="first rebuild l2kd/resources/pretrain/{train,heldout}.txt from the raw releases in RAW_DIR")
    p.add_argument("--mini", action="store_true", help="the miniature recipe of the tests (seconds)")
    p.add_argument("--steps", type=int, default=0, help="override the recipe's number of steps")
    p.add_argument("--checkpoint_every", type=int, default=25, help="steps between resumable states (0: none)")
    p.add_argument("--eval_every", type=int, default=0, help="steps between held-out perplexity logs (0: end only)")
    p.add_argument("--compare", type=int, default=512, metavar="N",
                   help="rnnlg.rest training examples of the soft-target comparison (0: skip it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_console_logging()
    if args.corpus_from:
        counts = build_corpus(args.corpus_from)
        log.info("pretraining corpus rebuilt: %s", counts)
    recipe = MINI_RECIPE if args.mini else DEFAULT_RECIPE
    if args.steps:
        recipe = dataclasses.replace(recipe, steps=args.steps)
    checksum = recipe_checksum(recipe)
    out = args.out or os.path.join(cache_root(), checksum[:16])
    ok, _ = verify_base(out, checksum)
    if ok:
        log.info("%s already holds this recipe's base (checksum %s): not rebuilt", out, checksum[:16])
    else:
        build_base(recipe, out, checkpoint_every=args.checkpoint_every, eval_every=args.eval_every, quiet=args.quiet)
    record = read_record(out) or {}
    if args.compare:
        record["soft_targets_T2_rnnlg.rest_train"] = cmp = compare_soft_targets(out, recipe, 2.0, args.compare)
        for name, s in cmp.items():
            print(f"{name:12s} soft targets at T=2 on {s['positions']} rnnlg.rest answer positions: mean entropy "
                  f"{s['entropy']:.3f} nats ({100 * s['entropy_fraction']:.1f}% of log V), mean top-1 "
                  f"{s['top1']:.4f}, gold-token {s['gold_prob']:.4f}")
        from l2kd.io_utils import atomic_write_json

        atomic_write_json(os.path.join(out, RECORD_FILE), record)
    if args.ship:
        shipped = export_half(out, SHIPPED_BASE)
        size = sum(os.path.getsize(os.path.join(SHIPPED_BASE, f)) for f in os.listdir(SHIPPED_BASE))
        print(f"shipped fp16 copy: {SHIPPED_BASE} ({size / 2**20:.1f} MiB)")
        record = {**record, "shipped_weights_sha256": shipped.get("weights_sha256")}
    print(json.dumps({k: v for k, v in record.items() if k not in ("history", "recipe")}, indent=1, default=str))
    print(f"use it: python -m l2kd.train --model_name {out} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
