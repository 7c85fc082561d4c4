"""End-to-end Word-KD throughput: fused kd_loss vs the eager formulation.

(a) the kd_loss micro table of benchmarks/bench_kd_loss.py (fwd+bwd, V = 50257);
(b) tokens/s of a full Word-KD training step on a tiny GPT-2 (2 layers, 2 heads, 128 dims,
    vocab 50261 = GPT-2 + task tokens): teacher eval forward under no_grad, student train
    forward, KD loss on the current-task rows (mask), backward, AdamW step; once with
    ``l2kd.ops.kd_loss`` and once with the eager ``log_softmax/softmax/kl_div`` formulation.

    python benchmarks/kd_throughput.py [--quick] [--device cpu|cuda] [--batch 8] [--seq 64]
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from benchmarks.bench_kd_loss import COLUMNS as MICRO_COLUMNS  # noqa: E402
from benchmarks.bench_kd_loss import eager_kd_loss, run_micro  # noqa: E402
from benchmarks.common import peak_extra_memory_mb, print_table, time_fn, write_results  # noqa: E402
from l2kd.ops import backend, kd_loss  # noqa: E402

TEMPERATURE = 2.0
STEP_COLUMNS = ["impl", "batch", "seq", "median_ms", "p20_ms", "p80_ms", "tokens_per_s", "speedup", "peak_mb"]


def tiny_gpt2(seed: int, device: torch.device):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=128, vocab_size=50261, n_positions=1024)
    return GPT2LMHeadModel(cfg).to(device)


def make_step(student, teacher, opt, ids: torch.Tensor, mask: torch.Tensor,
              kd_fn: Callable[..., torch.Tensor]) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher(ids).logits
        s_logits = student(ids).logits
        loss = kd_fn(s_logits, t_logits, mask, TEMPERATURE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def run_step_bench(device: torch.device, batch: int, seq: int, reps: int, warmup: int,
                   with_memory: bool) -> List[Dict[str, object]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50261, (batch, seq), generator=g).to(device)
    # current-task rows: everything after a short "context" prefix (as QA + LM rows of one task)
    mask = torch.arange(seq)[None, :].expand(batch, seq) >= torch.randint(0, seq // 4, (batch, 1), generator=g)
    mask = mask.to(device)
    teacher = tiny_gpt2(1, device).eval()
    impls = {"eager": eager_kd_loss, "fused": lambda s, t, m, T: kd_loss(s, t, m, T)}
    # same starting weights for both, checked to give the same first loss
    first = {}
    for name, fn in impls.items():
        student = tiny_gpt2(2, device).train()
        torch.manual_seed(3)  # dropout
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
        first[name] = make_step(student, teacher, opt, ids, mask, fn)().item()
    assert abs(first["eager"] - first["fused"]) <= 1e-4 * abs(first["eager"]), first

    steps = {}
    for name, fn in impls.items():
        student = tiny_gpt2(2, device).train()
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
        steps[name] = make_step(student, teacher, opt, ids, mask, fn)
        for _ in range(warmup):
            steps[name]()
    # interleave the implementations round by round, so a change of machine load hits both alike
    times: Dict[str, List[float]] = {name: [] for name in impls}
    for _ in range(reps):
        for name, step in steps.items():
            times[name].append(time_fn(step, device, warmup=0, reps=1)["median_ms"])
    records = []
    for name, step in steps.items():
        ts = sorted(times[name])
        q = lambda f: ts[min(len(ts) - 1, int(round(f * (len(ts) - 1))))]  # noqa: E731
        tm = {"median_ms": q(0.5), "p20_ms": q(0.2), "p80_ms": q(0.8)}
        peak = peak_extra_memory_mb(step, device) if with_memory else float("nan")
        records.append({"impl": name, "batch": batch, "seq": seq, **tm,
                        "tokens_per_s": batch * seq / (tm["median_ms"] / 1e3), "peak_mb": peak})
    for r in records:
        r["speedup"] = records[0]["median_ms"] / r["median_ms"]
    return records


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small micro grid, fewer repetitions")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--skip-micro", action="store_true", help="only the training-step table")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    ap.add_argument("--no-json", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    print(f"backend={backend()} device={device} threads={torch.get_num_threads()} T={TEMPERATURE}")

    micro: List[Dict[str, object]] = []
    if not args.skip_micro:
        print("\n(a) kd_loss fwd+bwd micro table")
        micro = run_micro(device, args.quick, not args.no_memory)
        print_table(micro, MICRO_COLUMNS)

    print(f"\n(b) Word-KD training step, tiny GPT-2 (2x128, vocab 50261), batch {args.batch}x{args.seq} tokens")
    reps, warmup = (3, 1) if args.quick else (7, 2)
    steps = run_step_bench(device, args.batch, args.seq, reps, warmup, not args.no_memory)
    print_table(steps, STEP_COLUMNS)

    if not args.no_json:
        records = [{"table": "kd_loss", **r} for r in micro] + [{"table": "train_step", **r} for r in steps]
        path = write_results("kd_throughput", device, records,
                             {"temperature": TEMPERATURE, "batch": args.batch, "seq": args.seq, "quick": args.quick,
                              "model": "GPT2 n_layer=2 n_head=2 n_embd=128 vocab=50261", "optimizer": "AdamW lr=1e-4"})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
