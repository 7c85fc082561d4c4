"""Frozen configuration dataclasses passed down from the CLIs (no module-level args).

Every field carries its unit or range in a comment. ``dataclasses.asdict(cfg)`` is saved
with every checkpoint and result file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple


@dataclass(frozen=True)
class SamplingConfig:
    """Top-k / nucleus sampling as LAMOL (k=1 is greedy)."""

    top_k: int = 20  # 0 = no top-k filter; clamped to the vocabulary size
    top_p: float = 0.0  # 0 = no nucleus filter; (0, 1]
    temperature: float = 1.0  # > 0, logits are divided by it
    use_kernels: bool = True  # l2kd.ops.top_k_sample when compiled, else reference


@dataclass(frozen=True)
class TrainConfig:
    """Everything the lifelong loop needs; built from the CLI by :func:`l2kd.train.config_from_args`."""

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
