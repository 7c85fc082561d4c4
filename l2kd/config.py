"""Frozen configuration dataclasses passed down from the CLIs (no module-level args).

Every field carries its unit or range in a comment. A config validates itself when it is
built, so the library refuses exactly what the command line refuses, with the same message
(it names the flag). ``dataclasses.asdict(cfg)`` is saved with every run record.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Tuple

from l2kd.data.multitask import MULTITASK_SPECIFIC_ROWS
from l2kd.data.tasks import TASKS
from l2kd.data.unbound import CHUNK_PREFIX

SEQ_TRAIN_TYPES = ("lll", "finetune", "multitask", "multilm", "mas", "ewc", "gem")


class ConfigError(ValueError):
    """A configuration value out of range or contradicting another; the message names the flag."""


def check_paths(cfg: "TrainConfig") -> None:
    """Raise :class:`ConfigError` when a folder the run reads is missing."""
    problems = cfg.path_problems()
    if problems:
        raise ConfigError("; ".join(problems))


@dataclass(frozen=True)
class SamplingConfig:
    """Top-k / nucleus sampling as LAMOL (k=1 is greedy)."""

    top_k: int = 20  # 0 = no top-k filter; clamped to the vocabulary size
    top_p: float = 0.0  # 0 = no nucleus filter; (0, 1]
    temperature: float = 1.0  # > 0, logits are divided by it
    use_kernels: bool = True  # l2kd.ops.top_k_sample when compiled, else reference

    def problems(self, suffix: str) -> List[str]:
        """What is wrong with this sampling config, naming the ``--*_<suffix>`` flags."""
        out = []
        if self.top_k < 0:
            out.append(f"--top_k_{suffix}: must be >= 0 (0 = no top-k) (got {self.top_k})")
        if not 0.0 <= self.top_p <= 1.0:
            out.append(f"--top_p_{suffix}: must be in [0, 1] (got {self.top_p})")
        if not self.temperature > 0:
            out.append(f"--temperature_{suffix}: must be > 0 (got {self.temperature})")
        return out


@dataclass(frozen=True)
class TrainConfig:
    """Everything the lifelong loop needs; built from the CLI by :func:`l2kd.settings.config_from_args`."""

    tasks: Tuple[str, ...]
    data_dir: str
    model_dir_root: str
    model_name: str = "gpt2"
    seq_train_type: str = "lll"  # lll | finetune | multitask | multilm | ewc | mas | gem
    seed: int = 42
    # optimisation
    learning_rate: float = 6.25e-5
    adam_epsilon: float = 1e-4
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0  # 0 = no clipping
    n_warmup_ratio: float = 0.005  # fraction of the schedule spent warming up
    decay_style: str = "linear"  # linear | cos | constant
    textbook_schedule: bool = False  # steps-based, decays to 0 (original: examples-based, ends > 0)
    no_decay_layernorm: bool = False  # textbook weight decay groups (original decays LN weights)
    torch_adamw: bool = False  # torch.optim.AdamW's update (original: pytorch-transformers 1.2.0's, l2kd.optim)
    n_train_epochs: int = 9  # per task
    dynamic_epochs: bool = False
    max_n_epochs: int = 9
    train_batch_size: int = 0  # examples per step; 0 = dynamic token budget
    min_batch_size: int = 4
    min_n_steps: int = 1500
    cpu_batch_tokens: int = 2048  # dynamic-batch budget on CPU, in (padded length ^ 1.163) units
    # losses
    lm_lambda: float = 0.25
    tokens_weight: float = 5.0  # class weight of __ans__ (and __sep__) in the cross-entropy
    # data / format
    add_task_tokens: bool = False
    use_sep: bool = False
    max_train_examples: int = 0  # 0 = all
    max_test_examples: int = 0  # 0 = all
    # replay
    gen_lm_sample_percentage: float = 0.05
    real_sample: bool = False
    lm_sampling: SamplingConfig = field(default_factory=SamplingConfig)
    qa_sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_gen_len: int = 0  # 0 = model context
    # evaluation
    test_batch_size: int = 0
    test_all: bool = False
    # regularisers / GEM / distillation
    reg_lambda: float = 1.0
    qp_margin: float = 0.5
    reg_anchor: str = "initial"  # EWC/MAS anchor: initial (original: weights before task 1) | previous (textbook)
    distil: bool = False
    seq_distil: bool = False
    temperature_kd: float = 2.0
    ref1: bool = False  # Seq-KD file named "ref1" instead of "distil" (the original's --ref1)
    teacher_dir: str = ""  # explicit teacher folder; "" = search, then train
    teacher_root: str = ""  # where missing teachers are trained and looked up; "" = model_dir_root
    teacher_n_train_epochs: int = 0  # 0 = n_train_epochs
    teacher_learning_rate: float = 0.0  # 0 = learning_rate
    # runtime
    device: str = "auto"
    fp32: bool = False
    bf16_cpu: bool = False
    use_kernels: bool = True
    logging_steps: int = 1000
    checkpoint_steps: int = 500  # resumable checkpoint every N steps (and at every epoch end); 0 = epoch ends
    quiet: bool = False
    skip_tasks: Tuple[str, ...] = ()
    test_training_set: bool = False
    discard_stale: bool = False  # move tasks learnt under another configuration aside and retrain them
    # the original's data-arrangement and debug flags
    debug: bool = False  # first 10 paragraphs of every file, data order, one pseudo-sample per previous task
    round_robin: bool = False  # a stage's tasks shuffled, then interleaved one paragraph each; fixed batches unshuffled
    upsample_data: Tuple[int, ...] = ()  # per task of a stage, how many times its paragraphs are repeated
    multitask_specific: bool = False  # multitask: task i's LM rows start with gen id + i (4 extra embedding rows)
    extra_e2e: bool = False  # test e2enlg on its "extra" file instead of "test"
    unbound: int = 0  # > 0: every task's training data concatenated, cut into chunks task_0.. (<= this many)

    def __post_init__(self) -> None:
        errors = self.problems()
        if errors:
            raise ConfigError("; ".join(errors))

    def problems(self) -> List[str]:
        """Every out-of-range or contradictory value, one message per problem (flag named)."""
        bad = [t for t in self.tasks if t not in TASKS]
        out = []
        if not self.tasks:
            out.append("--tasks: at least one task is needed")
        if bad:
            out.append(f"--tasks: unknown task(s) {', '.join(bad)}; valid tasks: {' '.join(TASKS)}")
        if len(set(self.tasks)) != len(self.tasks):
            out.append(f"--tasks: a task appears twice in {' '.join(self.tasks)}")
        out += self._skip_problems()
        checks = [
            ("--gen_lm_sample_percentage", 0.0 <= self.gen_lm_sample_percentage <= 10.0, "must be in [0, 10]",
             self.gen_lm_sample_percentage),
            ("--learning_rate", self.learning_rate > 0, "must be > 0", self.learning_rate),
            ("--adam_epsilon", self.adam_epsilon > 0, "must be > 0", self.adam_epsilon),
            ("--lm_lambda", self.lm_lambda >= 0, "must be >= 0", self.lm_lambda),
            ("--n_train_epochs", self.n_train_epochs >= 1, "must be >= 1", self.n_train_epochs),
            ("--max_n_epochs", self.max_n_epochs >= 1, "must be >= 1", self.max_n_epochs),
            ("--n_warmup_ratio", 0.0 <= self.n_warmup_ratio < 1.0, "must be in [0, 1)", self.n_warmup_ratio),
            ("--decay_style", self.decay_style in ("linear", "cos", "constant", "exp"),
             "must be linear, cos, constant or exp", self.decay_style),
            ("--min_batch_size", self.min_batch_size >= 1, "must be >= 1", self.min_batch_size),
            ("--min_n_steps", self.min_n_steps >= 1, "must be >= 1", self.min_n_steps),
            ("--train_batch_size", self.train_batch_size >= 0, "must be >= 0 (0 = dynamic)", self.train_batch_size),
            ("--test_batch_size", self.test_batch_size >= 0, "must be >= 0 (0 = dynamic)", self.test_batch_size),
            ("--temperature_kd", self.temperature_kd > 0, "must be > 0", self.temperature_kd),
            ("--tokens_weight", self.tokens_weight > 0, "must be > 0", self.tokens_weight),
            ("--weight_decay", self.weight_decay >= 0, "must be >= 0", self.weight_decay),
            ("--max_grad_norm", self.max_grad_norm >= 0, "must be >= 0", self.max_grad_norm),
            ("--reg_lambda", self.reg_lambda >= 0, "must be >= 0", self.reg_lambda),
            ("--reg_anchor", self.reg_anchor in ("initial", "previous"), "must be initial or previous",
             self.reg_anchor),
            ("--logging_steps", self.logging_steps >= 1, "must be >= 1", self.logging_steps),
            ("--checkpoint_steps", self.checkpoint_steps >= 0, "must be >= 0", self.checkpoint_steps),
            ("--max_train_examples", self.max_train_examples >= 0, "must be >= 0", self.max_train_examples),
            ("--max_test_examples", self.max_test_examples >= 0, "must be >= 0", self.max_test_examples),
            ("--max_gen_len", self.max_gen_len >= 0, "must be >= 0", self.max_gen_len),
            ("--cpu_batch_tokens", self.cpu_batch_tokens >= 64, "must be >= 64", self.cpu_batch_tokens),
            ("--teacher_n_train_epochs", self.teacher_n_train_epochs >= 0, "must be >= 0",
             self.teacher_n_train_epochs),
            ("--teacher_learning_rate", self.teacher_learning_rate >= 0, "must be >= 0", self.teacher_learning_rate),
        ]
        out += [f"{flag}: {why} (got {got})" for flag, ok, why, got in checks if not ok]
        out += self.lm_sampling.problems("lm") + self.qa_sampling.problems("qa")
        if self.real_sample and "lll" not in self.seq_train_type:
            out.append("--real_sample only applies to --seq_train_type lll")
        if self.seq_train_type in ("multitask", "multilm") and (self.distil or self.seq_distil):
            out.append(f"--distil/--seq_distil are not supported with --seq_train_type {self.seq_train_type}")
        out += self._arrangement_problems()
        out += self._unbound_problems()
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            out.append(f"--device: expected auto, cpu, cuda or cuda:N (got {self.device!r})")
        return out

    def _skip_problems(self) -> List[str]:
        """``--skip_tasks`` names stages: the tasks, or with ``--unbound K`` the chunks
        ``task_0 .. task_<K-1>`` (the original compares the skipped names with the chunks')."""
        if self.unbound > 0:
            valid = [f"{CHUNK_PREFIX}{i}" for i in range(self.unbound)]
            bad = [t for t in self.skip_tasks if t not in valid]
            return [f"--skip_tasks: {', '.join(bad)} not a chunk of --unbound {self.unbound} (the stages are "
                    f"{valid[0]} .. {valid[-1]})"] if bad else []
        bad = [t for t in self.skip_tasks if t not in self.tasks]
        return [f"--skip_tasks: {', '.join(bad)} not in --tasks"] if bad else []

    def _unbound_problems(self) -> List[str]:
        """``--unbound`` with what the original's boundary-free setting cannot run: the flags are
        named, with the reason (docs/original.md section 9)."""
        if self.unbound < 0:
            return [f"--unbound: must be >= 0 (0 = off, K = cut the tasks' concatenated training data into at most "
                    f"K chunks) (got {self.unbound})"]
        if not self.unbound:
            return []
        out = []
        flag = f"--unbound {self.unbound}"
        if self.seq_train_type in ("multitask", "multilm"):
            out.append(f"{flag} with --seq_train_type {self.seq_train_type}: the original ignores --unbound for "
                       "the multitask types (their single stage has no task boundaries to remove); drop --unbound")
        if self.seq_train_type == "gem":
            out.append(f"{flag} with --seq_train_type gem: the original never creates GEM's memories under "
                       "--unbound and stops at the second chunk; use lll, finetune, ewc or mas")
        if self.distil:
            out.append(f"{flag} with --distil: Word-KD needs a teacher trained on each task, and a chunk "
                       "(task_0, ...) is not a task with a teacher (the original looks for "
                       "models/gpt2/lll/task_0_0.2/task_0); drop one of the flags")
        if self.seq_distil:
            name = "ref1" if self.ref1 else "distil"
            out.append(f"{flag} with --seq_distil: Seq-KD trains each task on its teacher's decodes, which do not "
                       f"exist for a chunk (the original reads task_<i>-{name}.json, which nothing writes); drop one "
                       "of the flags")
        return out

    def _arrangement_problems(self) -> List[str]:
        """``--upsample_data`` / ``--multitask_specific`` against the stage layout."""
        out = []
        multi = self.seq_train_type in ("multitask", "multilm")
        per_stage = len(self.tasks) if multi else 1
        if self.upsample_data and len(self.upsample_data) != per_stage:
            need = (f"one rate per task ({len(self.tasks)}, e.g. {'_'.join(['1'] * len(self.tasks))})" if multi
                    else "one rate (each stage of a sequential type reads one task)")
            out.append(f"--upsample_data: {len(self.upsample_data)} rate(s) given, {self.seq_train_type} needs {need}")
        if any(r < 1 for r in self.upsample_data):
            out.append(f"--upsample_data: every rate must be >= 1 (got {'_'.join(map(str, self.upsample_data))})")
        if self.multitask_specific and not multi:
            out.append("--multitask_specific only applies to --seq_train_type multitask or multilm")
        if self.multitask_specific and len(self.tasks) > MULTITASK_SPECIFIC_ROWS + 1:
            out.append(f"--multitask_specific: at most {MULTITASK_SPECIFIC_ROWS + 1} tasks (the original adds "
                       f"{MULTITASK_SPECIFIC_ROWS} embedding rows; got {len(self.tasks)})")
        return out

    def path_problems(self) -> List[str]:
        """The folders this config reads that do not exist (checked when a run starts, not at
        construction, so a config can describe a run made on another machine)."""
        out = []
        if self.teacher_dir and not os.path.isdir(self.teacher_dir):
            out.append(f"--teacher_dir: {self.teacher_dir!r} is not a directory")
        if not os.path.isdir(self.data_dir):
            out.append(f"--data_dir: {self.data_dir!r} is not a directory")
        return out
