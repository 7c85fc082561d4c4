"""Gradient norms of the Word-KD loss against plain cross-entropy, for one teacher.

A diagnostic for the distillation study: on the same batches of a task's training answer
positions, how large is the student's gradient of ``T^2 * KL(teacher_T || student_T)`` (the
Word-KD loss) compared with the gradient of the cross-entropy to the gold tokens, and how well
do the two point the same way (cosine)? Usage::

    python benchmarks/kd_grad_norms.py --teacher TEACHER_TASK_DIR --task rnnlg.rest \
        [--student BASE_OR_TASK_DIR] [--temperatures 1 2 4] [--examples 64]
"""
from __future__ import annotations

import argparse
import json
from typing import Dict, List

import torch
import torch.nn.functional as F

from l2kd.cli.study import PRETRAINED
from l2kd.data import bundled_data_dir
from l2kd.data.loading import load_task_examples
from l2kd.data.qa_format import collate
from l2kd.distillation import load_teacher
from l2kd.losses import selected_logits
from l2kd.model import load_base_model, resize_for_tokenizer
from l2kd.ops.kd_loss import kd_loss
from l2kd.pretraining import ensure_base
from l2kd.tokenizer import add_special_tokens, load_base_tokenizer


def flat_grad(model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
    """The gradient of ``loss`` over the model's trainable parameters, as one vector."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="the teacher's task folder (save_pretrained layout)")
    p.add_argument("--task", required=True)
    p.add_argument("--student", default=PRETRAINED, help="the student's starting model (default: the shipped base)")
    p.add_argument("--data_dir", default=bundled_data_dir())
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=1, help="seeds the rows added for the special tokens")
    args = p.parse_args()
    student_name = ensure_base(quiet=True) if args.student == PRETRAINED else args.student
    tok = load_base_tokenizer(student_name)
    ids = add_special_tokens(tok, [args.task], False, False)
    torch.manual_seed(args.seed)
    student = load_base_model(student_name, seed=args.seed)
    resize_for_tokenizer(student, len(tok))
    student.eval()  # no dropout: the figures are a function of the models and the data
    teacher = load_teacher(args.teacher, torch.device("cpu"))
    exs = load_task_examples(args.data_dir, args.task, "train", tok, ids, 1024, args.examples)
    t_vocab = teacher.get_output_embeddings().weight.shape[0]
    sums: Dict[str, List[float]] = {}
    for s in range(0, len(exs), args.batch):
        batch = collate(exs[s:s + args.batch], ids)
        with torch.no_grad():  # a teacher without the later task tokens sees its last id, as in training
            t_logits, _, _ = selected_logits(teacher, batch.qa_input.clamp(max=t_vocab - 1), batch.qa_target)
        s_logits, gold, _ = selected_logits(student, batch.qa_input, batch.qa_target)
        g_ce = flat_grad(student, F.cross_entropy(s_logits, gold))
        sums.setdefault("ce", []).append(float(g_ce.norm()))
        for t in args.temperatures:
            g_kd = flat_grad(student, kd_loss(s_logits, t_logits, temperature=t))  # the training loss itself
            sums.setdefault(f"kd_T{t:g}", []).append(float(g_kd.norm()))
            sums.setdefault(f"cos_T{t:g}", []).append(float(F.cosine_similarity(g_kd, g_ce, dim=0)))
    out = {k: sum(v) / len(v) for k, v in sums.items()}
    out.update(task=args.task, teacher=args.teacher, student=student_name, batches=len(sums["ce"]))
    print(f"{'loss':10s} {'grad norm':>10s} {'ratio to CE':>12s} {'cos with CE':>12s}")
    print(f"{'CE':10s} {out['ce']:10.3f} {1.0:12.3f} {1.0:12.3f}")
    for t in args.temperatures:
        k = f"T{t:g}"
        print(f"{'KD ' + k:10s} {out['kd_' + k]:10.3f} {out['kd_' + k] / out['ce']:12.3f} {out['cos_' + k]:12.3f}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
