"""Benchmark of one GEM training step, and of ``gem_project`` at GPT-2 124M scale.

1. ``step``: one full training step of ``l2kd.strategies.GEM`` on the offline ``tiny-gpt2`` (real
   50261-token vocabulary): QA loss, backward, clip, ``after_backward`` (a full pass over every
   memory: batched QA-loss gradients written into the ``[t, P]`` buffer, then the projection),
   AdamW step. ``--memories`` past tasks with ``--memory_size`` bundled examples each, batch 8.
   The current loss minus the memories' loss makes every step conflict, so every step projects.
   Timed with ``use_kernels=True`` (fused ``gem_project`` and chunked cross-entropy, when
   compiled) and ``use_kernels=False`` (references); plus ``after_backward`` alone and the
   projection alone at this ``P``.
2. ``project``: ``gem_project`` alone on a synthetic flat gradient of GPT-2 124M's size
   (124,442,880 parameters with LAMOL's 4 added tokens), ``t = 4`` memories, fp32, every
   constraint violated, written ``out=`` the gradient (as the strategy does): fused vs reference.
   Floor: read (2t + 2) * P * 4 bytes (M and g twice) and write P * 4 (g once) at the bandwidth this
   process reaches (``common.measure_bandwidth``).

Run from the repo root: ``python benchmarks/bench_gem_step.py [--quick] [--load_library SO]``.
``--load_library`` loads a separately built ``torch.ops.l2kd`` library (a development JIT build
of ``gem_project``) when the package's ``l2kd._C`` is not built; the table says which backend ran.
"""
from __future__ import annotations

import argparse
import os
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

P_GPT2 = 124_442_880


def _load_libraries(paths):
    for p in paths:
        torch.ops.load_library(p)
    if paths:  # the library registered torch.ops.l2kd.*: let l2kd.ops treat it as the extension
        sys.modules.setdefault("l2kd._C", types.ModuleType("l2kd._C"))


def bench_step(args, device, records):
    import numpy as np

    from common import time_fn

    from l2kd.config import TrainConfig
    from l2kd.data import bundled_data_dir
    from l2kd.losses import head_ce, token_weights
    from l2kd.model import load_base_model, resize_for_tokenizer
    from l2kd.ops.gem_project import gem_project
    from l2kd.strategies import GEM, TaskContext
    from l2kd.tokenizer import add_special_tokens, load_base_tokenizer
    from l2kd.data.loading import load_task_examples
    from l2kd.optim import make_optimizer

    tasks = ["rnnlg.rest", "rnnlg.hotel", "rnnlg.laptop", "e2enlg"][: args.memories] + ["rnnlg.tv"]
    tok = load_base_tokenizer("tiny-gpt2")
    ids = add_special_tokens(tok, tasks, False, False)
    model = load_base_model("tiny-gpt2", 0).to(device)
    resize_for_tokenizer(model, len(tok))
    model.train()
    for use_kernels in (True, False):
        cfg = TrainConfig(tasks=tuple(tasks), data_dir=bundled_data_dir(), model_dir_root=".", model_name="tiny-gpt2",
                          seq_train_type="gem", train_batch_size=8, gen_lm_sample_percentage=1.0,
                          use_kernels=use_kernels, learning_rate=1e-4)
        data = {t: load_task_examples(cfg.data_dir, t, "train", tok, ids, 512, args.memory_size) for t in tasks}
        cur = data[tasks[-1]][:8]
        ctx = TaskContext(index=len(tasks) - 1, tasks=(tasks[-1],), prev_tasks=tuple(tasks[:-1]), cfg=cfg, run_dir=".",
                          tokenizer=tok, ids=ids, task_dir=".", prev_task_dir=None, train_examples=data[tasks[-1]],
                          prev_train_examples={t: data[t] for t in tasks[:-1]}, max_len=512, device=device,
                          generator=torch.Generator(device=device).manual_seed(0), rng=np.random.default_rng(0),
                          logger=__import__("logging").getLogger("bench"))
        gem = GEM()
        gem.memories = {t: data[t] for t in tasks[:-1]}  # memory_size real examples per past task
        gem.before_task(ctx, model)
        opt = make_optimizer(model, cfg)
        w = token_weights(len(tok), ids, cfg.tokens_weight, device)
        from l2kd.data.qa_format import collate

        b = collate(cur, ids).to(device)
        mb = collate(data[tasks[0]][:8], ids).to(device)

        def step():
            loss, _ = gem.loss(ctx, model, b, w)
            loss = loss - 2.0 * head_ce(model, mb.qa_input, mb.qa_target, w, use_kernels)  # force a conflict
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            gem.after_backward(ctx, model)
            opt.step()

        def after_backward_only():
            gem.after_backward(ctx, model)

        def project_only():
            gem_project(gem._g, gem._mem, 0.5, 1e-3, use_kernels=use_kernels, out=gem._g)

        t_step = time_fn(step, device, warmup=1, reps=args.reps)
        t_ab = time_fn(after_backward_only, device, warmup=1, reps=args.reps)
        t_pr = time_fn(project_only, device, warmup=1, reps=args.reps)
        st = gem.counts
        from l2kd.ops.gem_project import _has_kernel

        records.append({"part": "step", "use_kernels": use_kernels,
                        "gem_project": "fused" if use_kernels and _has_kernel(device) else "reference",
                        "P": gem._g.numel(), "t": gem._mem.shape[0], "memory_size": args.memory_size,
                        "step_ms": t_step["median_ms"], "step_p20": t_step["p20_ms"], "step_p80": t_step["p80_ms"],
                        "after_backward_ms": t_ab["median_ms"], "project_ms": t_pr["median_ms"],
                        "projected": f"{st['projected_steps']}/{st['steps']}"})


def bench_project(args, device, records, bandwidth):
    from common import time_fn

    from l2kd.ops.gem_project import _has_kernel, gem_project, gem_project_ref

    P, t = (args.P or P_GPT2), 4
    gen = torch.Generator(device=device).manual_seed(0)
    mem = torch.randn(t, P, generator=gen, device=device)
    g0 = -mem.sum(0) + 0.1 * torch.randn(P, generator=gen, device=device)  # conflicts with every memory
    assert bool((mem @ g0 < 0).all())
    g = torch.empty_like(g0)
    # agreement first
    fused = gem_project(g0, mem, 0.5, 1e-3, out=g.copy_(g0))
    ref = gem_project_ref(g0, mem, 0.5, 1e-3)
    err = float((fused - ref).abs().max() / ref.abs().max())
    assert err < 1e-5, err
    del ref
    floor_ms = bandwidth.floor_ms((2 * t + 2) * P * 4, P * 4)
    res = {}
    for name, fn in (("fused", lambda: gem_project(g.copy_(g0), mem, 0.5, 1e-3, out=g)),
                     ("reference", lambda: gem_project(g.copy_(g0), mem, 0.5, 1e-3, use_kernels=False, out=g))):
        res[name] = time_fn(fn, device, warmup=1, reps=args.reps)
    copy = time_fn(lambda: g.copy_(g0), device, warmup=1, reps=args.reps)["median_ms"]  # part of both timings
    records.append({"part": "project", "P": P, "t": t, "backend": "fused" if _has_kernel(device) else "reference",
                    "fused_ms": res["fused"]["median_ms"] - copy, "reference_ms": res["reference"]["median_ms"] - copy,
                    "speedup": res["reference"]["median_ms"] / max(res["fused"]["median_ms"], 1e-9),
                    "floor_ms": floor_ms, "fused_vs_floor": (res["fused"]["median_ms"] - copy) / floor_ms,
                    "max_rel_err": err})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="P = 8M for the projection, 3 repetitions")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--memories", type=int, default=2, help="past tasks in the step benchmark (1-4)")
    ap.add_argument("--memory_size", type=int, default=16, help="examples per memory in the step benchmark")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--P", type=int, default=0, help="flat size for the projection (default GPT-2 124M)")
    ap.add_argument("--load_library", action="append", default=[], help="a built torch.ops.l2kd library (.so)")
    args = ap.parse_args()
    if args.quick:
        args.P, args.reps = args.P or 8_000_000, 3
    _load_libraries(args.load_library)
    from common import measure_bandwidth, print_table, write_results

    from l2kd.ops import backend

    device = torch.device(args.device)
    records = []
    bench_step(args, device, records)
    bandwidth = measure_bandwidth(device)
    bench_project(args, device, records, bandwidth)
    print(f"device {device}, l2kd backend {backend()}, threads {torch.get_num_threads()}, bandwidth: {bandwidth.describe()}")
    print_table([r for r in records if r["part"] == "step"],
                ["use_kernels", "gem_project", "P", "t", "memory_size", "step_ms", "step_p20", "step_p80",
                 "after_backward_ms", "project_ms", "projected"])
    print()
    print_table([r for r in records if r["part"] == "project"],
                ["P", "t", "backend", "fused_ms", "reference_ms", "speedup", "floor_ms", "fused_vs_floor",
                 "max_rel_err"])
    path = write_results("gem_step", device, records, {"memories": args.memories, "memory_size": args.memory_size,
                                                        "reps": args.reps, "P": args.P or P_GPT2,
                                                        **bandwidth.record()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
