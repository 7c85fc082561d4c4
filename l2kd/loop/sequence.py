"""The lifelong sequence: one run folder, its lock and identity, and the stages in order.

``train_sequence`` checks every task's files, refuses a run folder that holds models learnt
under another configuration, then walks the stages: a finished stage is loaded (with the
strategy and random state it left), an unfinished one is trained by
:func:`l2kd.loop.task.train_task`. Teachers that L2KD needs are trained by calling
``train_sequence`` again on the teacher's own configuration and run folder; strategies get
that function through their :class:`~l2kd.strategies.TaskContext`. With ``--unbound K`` the
stages are the chunks of the tasks' concatenated training data (:mod:`l2kd.data.unbound`),
planned by :func:`l2kd.layout.plan_stages`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from contextlib import nullcontext
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from l2kd import distributed as dist
from l2kd.checkpoint import UnreadableStateFile, load_finished_state, load_task_model, resume_identity
from l2kd.config import ConfigError, TrainConfig, check_paths, strategy_problems
from l2kd.data.loading import load_task_paragraphs
from l2kd.data.multitask import arrange_stage, embedding_rows, task_specific_gen
from l2kd.data.qa_format import Encoded
from l2kd.data.squad import QAExample, load_answers_file, load_squad_file
from l2kd.data.tasks import answers_path, get_task, task_file
from l2kd.data.unbound import chunk_bounds, chunk_paragraphs, chunk_record, concatenated_training_data
from l2kd.io_utils import atomic_write_json, remove_stale_temps
from l2kd.layout import (CHECKPOINT, LOCK, RUN_RECORD, TASK_RECORD, TRAIN_LOG, is_finished, plan_stages,
                         run_dir_of, task_dir)
from l2kd.loop.checks import (check_encoded, check_skip_tasks, check_special_ids, check_tokenizer,
                              log_config_warnings, preflight_distil)
from l2kd.loop.failures import check_finished_files, report_fatal, set_aside_checkpoint
from l2kd.loop.task import Precision, train_task
from l2kd.model import context_length, load_base_model, resize_for_tokenizer
from l2kd.rng import restore_rng
from l2kd.run_identity import (IdentityMismatch, RunLock, differences, learning_config, mismatch_message,
                               read_task_identity)
from l2kd.runtime import log_to, precision_context, resolve_device, seed_everything
from l2kd.strategies import StepSetup, Strategy, TaskContext, make_strategy
from l2kd.tokenizer import add_special_tokens, load_base_tokenizer

log = logging.getLogger("l2kd")


def train_sequence(cfg: TrainConfig, strategy: Optional[Strategy] = None,
                   warnings: Sequence[str] = ()) -> Dict[str, object]:
    """Train ``cfg.tasks`` one after another (all at once for multitask/multilm).

    Writes the original's layout (run dir, per-task ``model-<epoch>``, ``model-finish``,
    ``config.json``, tokenizer files, ``lm.csv``) plus ``l2kd_task.json`` summaries, and
    returns the run summary. A finished task learnt under the same configuration is loaded,
    not retrained; one learnt under another is refused (or moved aside with ``discard_stale``).
    ``warnings`` (the command line's) are logged with the configuration's own when the run starts.
    An error that ends the run is written to the run's log (:mod:`l2kd.loop.failures`) and
    re-raised.
    """
    strategy = strategy or make_strategy(cfg)
    check_paths(cfg)
    problems = strategy_problems(cfg, strategy.traits)  # the strategy's own traits, a user class's too
    if problems:
        raise ConfigError("; ".join(problems))
    dist.init_from_env()
    device = dist.local_device(resolve_device(cfg.device))
    rdir = run_dir_of(cfg)
    os.makedirs(rdir, exist_ok=True)
    main = dist.is_main()
    # --quiet hides progress bars only; ranks other than 0 log warnings and errors only
    with log_to(os.path.join(rdir, TRAIN_LOG) if main else None, not main):
        try:
            with RunLock(os.path.join(rdir, LOCK)) if main else nullcontext():
                return _locked_run(cfg, strategy, rdir, device, main, warnings)
        except BaseException as exc:
            report_fatal(exc, rdir)
            raise


def _locked_run(cfg: TrainConfig, strategy: Strategy, rdir: str, device: torch.device, main: bool,
                warnings: Sequence[str]) -> Dict[str, object]:
    """The checks that need the run folder, then the stages."""
    if main:
        remove_stale_temps(rdir)  # half-written files of a killed earlier run
    log_config_warnings(cfg, warnings)
    identity = learning_config(cfg)
    # --unbound: the stages (and so the folders to check) depend on how many questions there are
    pool = concatenated_training_data(cfg.data_dir, cfg.tasks, cfg.max_train_examples) if cfg.unbound else []
    plan = plan_stages(cfg, len(pool))
    problem = _check_identity(cfg, rdir, identity, plan) if main else None
    problem = dist.broadcast(problem)
    if problem:
        raise IdentityMismatch(problem)
    sizes = preflight(cfg)
    check_skip_tasks(cfg, rdir, plan)
    log.info("run dir %s | device %s | strategy %s", rdir, device, strategy.name)
    if cfg.unbound:
        log.info("--unbound %d: %d questions of %s cut into %d chunks (%s)", cfg.unbound, len(pool),
                 " ".join(cfg.tasks), len(plan), " ".join(s[0] for s in plan))
    return _run(cfg, strategy, rdir, device, identity, max(sizes.values()), plan, pool)


def preflight(cfg: TrainConfig) -> Dict[str, int]:
    """Read every task's training and test files (and answers files, and with ``--seq_distil``
    the user's Seq-KD files) before the first step, so a broken file of the last task is found
    now, not after the first tasks trained. Returns the training-set sizes (after
    ``max_train_examples``)."""
    sizes = {}
    for task in cfg.tasks:
        n = len(load_squad_file(task_file(cfg.data_dir, task, "train"), task))
        sizes[task] = min(n, cfg.max_train_examples) if cfg.max_train_examples else n
        load_squad_file(task_file(cfg.data_dir, task, "test"), task)
        if get_task(task).answers_file:
            load_answers_file(answers_path(cfg.data_dir, task))
    preflight_distil(cfg)
    return sizes


def _run(cfg: TrainConfig, strategy: Strategy, rdir: str, device: torch.device, identity: Dict[str, object],
         max_size: int, plan: List[List[str]], pool: Sequence[QAExample]) -> Dict[str, object]:
    seed_everything(cfg.seed)
    tok = load_base_tokenizer(cfg.model_name)
    model = load_base_model(cfg.model_name, cfg.seed).to(device)
    check_tokenizer(tok, model.get_input_embeddings().weight.shape[0], cfg.model_name)
    max_len = context_length(model)
    precision = Precision(*precision_context(device, cfg.fp32, cfg.bf16_cpu))
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    summary: Dict[str, object] = {"run_dir": rdir, "config": dataclasses.asdict(cfg), "identity": identity,
                                  "strategy": {"name": strategy.name, "traits": _traits_record(strategy)},
                                  "tasks": {}}
    prev_examples: Dict[str, List[Encoded]] = {}
    prev_dir: Optional[str] = None
    seen: List[str] = []
    bounds = chunk_bounds(len(pool), cfg.unbound) if cfg.unbound else []
    for index, stage in enumerate(plan):
        seen += stage
        tdir = task_dir(rdir, cfg.seq_train_type, stage[0])
        ids = add_special_tokens(tok, seen, cfg.add_task_tokens, cfg.use_sep)
        check_special_ids(tok, ids, seen, cfg.add_task_tokens, cfg.model_name)
        rows = embedding_rows(len(tok), cfg.multitask_specific)
        resize_for_tokenizer(model, rows)
        ctx = TaskContext(index=index, tasks=tuple(stage), prev_tasks=tuple(seen[: -len(stage)]), cfg=cfg,
                          run_dir=rdir, tokenizer=tok, ids=ids, task_dir=tdir, prev_task_dir=prev_dir,
                          prev_train_examples=prev_examples, max_len=max_len, device=device,
                          generator=generator, rng=rng, logger=log, train_teacher=_train_teacher,
                          setup=StepSetup.build(cfg, rows, ids, device, strategy.traits))
        name = ctx.name
        chunk = list(pool[bounds[index][0]:bounds[index][1]]) if cfg.unbound else None
        skipped = bool(cfg.skip_tasks) and set(stage) <= set(cfg.skip_tasks)
        if _restorable(tdir, name, skipped):
            ctx = dataclasses.replace(ctx, train_examples=_examples(cfg, stage, tok, ids, max_len, rng, chunk=chunk))
            check_encoded(ctx.train_examples, name, cfg.model_name, len(tok))
            summary["tasks"][name] = _restore_finished(model, strategy, ctx)
        else:
            sources = [strategy.training_data(ctx, t) for t in stage]
            loop_record = {}
            if chunk is not None:
                _no_other_source(strategy, name, sources)
                loop_record["unbound"] = chunk_record(chunk, index, bounds[index][0])
            ctx = dataclasses.replace(ctx, train_examples=_examples(cfg, stage, tok, ids, max_len, rng, sources,
                                                                    chunk))
            check_encoded(ctx.train_examples, name, cfg.model_name, len(tok), ", ".join(s for s in sources if s))
            extra = {"loop_record": loop_record} if loop_record else {}
            summary["tasks"][name] = train_task(model, tok, ctx, strategy, precision, max_size, identity, **extra)
        for t in stage:
            prev_examples[t] = [e for e in ctx.train_examples if e.task == t]
        prev_dir = tdir
    if dist.is_main():
        atomic_write_json(os.path.join(rdir, RUN_RECORD), summary)
    dist.barrier()
    return summary


def _traits_record(strategy: Strategy) -> Dict[str, object]:
    """The strategy's traits as plain values (the report reads a run's layout from them)."""
    t = strategy.traits
    return {"joint": t.joint, "replays": t.replays, "pct_in_folder": t.pct_in_folder,
            "memory_factor": t.memory_factor, "accepts": sorted(t.accepts)}


def _restorable(tdir: str, name: str, skipped: bool) -> bool:
    """Whether the stage is loaded rather than trained: finished (or ``--skip_tasks``) with
    intact state files. Rank 0 checks them (setting damaged ones aside) and tells the others."""
    finished = is_finished(tdir) or skipped
    if finished and dist.is_main():
        finished = check_finished_files(tdir, name)
    return bool(dist.broadcast(finished))


def _train_teacher(tcfg: TrainConfig) -> str:
    """How strategies get a missing teacher trained: a run of its own, in its own folder."""
    return train_sequence(tcfg)["run_dir"]


def _no_other_source(strategy: Strategy, name: str, sources: Sequence[Optional[str]]) -> None:
    """Under ``--unbound`` a chunk trains on its share of the tasks' training data: a strategy
    that asks for a file of its own cannot run there."""
    wanted = [s for s in sources if s]
    if wanted:
        raise ConfigError(f"--unbound: strategy {strategy.name} trains {name} on {', '.join(wanted)}, but a chunk "
                          "trains on its share of the tasks' concatenated training data; drop --unbound")


def _examples(cfg: TrainConfig, stage: List[str], tok, ids, max_len: int, rng: np.random.Generator,
              sources: Optional[List[Optional[str]]] = None, chunk: Optional[Sequence[QAExample]] = None
              ) -> List[Encoded]:
    """The stage's training examples, each task from its own split or from ``sources`` (or, under
    ``--unbound``, the stage's ``chunk``, one data set), arranged as the original's
    ``--upsample_data`` / ``--round_robin`` / ``--multitask_specific`` / ``--debug``."""
    if chunk is not None:
        per_task = [chunk_paragraphs(chunk, stage[0], tok, ids, max_len)]
        return arrange_stage(per_task, rng, cfg.upsample_data, cfg.round_robin, cfg.debug)
    per_task = [load_task_paragraphs(cfg.data_dir, t, "train", tok, ids, max_len, cfg.max_train_examples, src)
                for t, src in zip(stage, sources or [None] * len(stage))]
    if cfg.multitask_specific:
        per_task = task_specific_gen(per_task, ids.gen[stage[0]])
    return arrange_stage(per_task, rng, cfg.upsample_data, cfg.round_robin, cfg.debug)


def _restore_finished(model, strategy: Strategy, ctx: TaskContext) -> Dict[str, object]:
    """Load a finished stage's model, strategy state and random streams; return its summary."""
    load_task_model(model, ctx.task_dir)
    state = load_finished_state(ctx.task_dir, ctx.device)
    if state["strategy"] is not None:  # importances / memories saved with the task's model
        strategy.load_state_dict(state["strategy"])
    restore_rng(state["rng"], ctx.rng, ctx.generator)  # continue where the finished task left them
    log.info("[%s] model-finish found in %s: loaded, not retrained", "+".join(ctx.tasks), ctx.task_dir)
    record = os.path.join(ctx.task_dir, TASK_RECORD)
    if not os.path.isfile(record):  # --skip_tasks on a folder of the original code
        return {"tasks": list(ctx.tasks), "restored_from": ctx.task_dir}
    with open(record) as f:
        return json.load(f)


def _check_identity(cfg: TrainConfig, rdir: str, identity: Dict[str, object], plan: List[List[str]]
                    ) -> Optional[str]:
    """None when every finished stage and checkpoint of the run folder (the stages of ``plan``)
    was learnt under ``identity`` (or records none); else the refusal, unless ``discard_stale``
    moved them aside."""
    stale: Dict[str, List[str]] = {}
    dirs = []
    for stage in plan:
        tdir = task_dir(rdir, cfg.seq_train_type, stage[0])
        found = []
        if is_finished(tdir) and not check_finished_files(tdir, "+".join(stage)):
            continue  # damaged: set aside, to be trained again
        if is_finished(tdir):
            found.append((os.path.join(tdir, TASK_RECORD), read_task_identity(os.path.join(tdir, TASK_RECORD))))
        if os.path.isfile(os.path.join(tdir, CHECKPOINT)):
            try:
                found.append((os.path.join(tdir, CHECKPOINT), resume_identity(tdir)))
            except UnreadableStateFile as exc:
                set_aside_checkpoint(tdir, exc)
        for path, recorded in found:
            if recorded is None:
                log.warning("%s records no configuration (written by an older l2kd or the original): reused "
                            "without checking that it was learnt with these flags", path)
                continue
            diffs = differences(recorded, identity)
            if diffs:
                stale[path] = diffs
                dirs.append(tdir)
    if not stale:
        return None
    message = mismatch_message(rdir, stale)
    if not cfg.discard_stale:
        return message
    aside = _move_aside(rdir, sorted(set(dirs)))
    log.warning("%s\n--discard_stale: moved the stale tasks to %s; training them again", message, aside)
    return None


def _move_aside(rdir: str, tdirs: List[str]) -> str:
    """Move stale task folders (or, for multitask, the run folder's task files) into ``stale-<time>``."""
    aside = os.path.join(rdir, time.strftime("stale-%Y%m%d-%H%M%S"))
    os.makedirs(aside, exist_ok=True)
    keep = {LOCK, TRAIN_LOG, os.path.basename(aside)}
    for tdir in tdirs:
        if os.path.abspath(tdir) == os.path.abspath(rdir):  # multitask/multilm: the files of the run folder
            for f in os.listdir(rdir):
                if f not in keep and not f.startswith("stale-"):
                    shutil.move(os.path.join(rdir, f), os.path.join(aside, f))
        else:
            shutil.move(tdir, os.path.join(aside, os.path.basename(tdir)))
    record = os.path.join(rdir, RUN_RECORD)
    if os.path.isfile(record):
        shutil.move(record, os.path.join(aside, RUN_RECORD))
    return aside
