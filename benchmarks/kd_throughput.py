"""Word-KD cost: the KD loss part (LM heads + KD, fwd+bwd) and a full Word-KD training step.

(a) KD loss part, N rows, hidden H, vocab V (default 4096 x 768 x 50257, fp32), forward and
    backward to the student hidden states and head weight; the teacher head runs under no_grad:
      eager      full logits (h @ W^T) + log_softmax / softmax / kl_div + autograd
      unfused_op full logits + the compiled ``l2kd.ops.kd_loss``
      fused_head ``l2kd.ops.linear_kd_loss`` (chunked heads + kd_loss, no [N, V] logits)
      torch_compile  the eager variant (heads + kl_div) under torch.compile (inductor), compiled
                 and warmed up in its worker before the first round; a compile failure is
                 recorded as a skipped row
    Each variant lives in its own fresh worker process; the parent asks them for one run at
    a time, round-robin, so a change in machine load hits all alike. Peak memory is the
    process's resident-set high-water mark during one run minus its resident set before it
    (``/proc/self/clear_refs`` resets the mark; without it, ``ru_maxrss`` on the first run).
(b) tokens/s of a full Word-KD training step on a tiny GPT-2 (2 layers, 2 heads, 128 dims,
    vocab 50261): teacher forward under no_grad, student forward, KD loss on the current-task
    positions (mask), backward, AdamW step; ``eager`` (full logits + kl_div), ``fused_ops``
    (full logits + kd_loss op), ``fused_head`` (hidden states + linear_kd_loss). Peak memory
    here is the in-process resident-set high-water mark of one step (after warm-up).
(c) the same step on a GPT-2-small-size model (12 layers, 12 heads, 768 dims, vocab 50261: 124M
    parameters, random init), batch 8 x 64 tokens, on CUDA, where the logits' memory and time
    matter; on CPU (or with ``--toy``) the same code at a toy size (2 x 64), to exercise the path.
    Peers in the same step: ``liger`` = Liger-Kernel's fused linear JSD with beta 0 (KL of teacher
    to student without [N, V] logits; its reduction and temperature scaling differ from the
    original's, so its loss is recorded next to eager's, not required to equal it), ``cce`` =
    cut-cross-entropy's linear_cross_entropy on the hard next-token labels (not a KD loss: the
    cost of a fused cross-entropy head, for scale). A peer that is not installed, or fails, is a
    row with the reason.
Goals (ratios in one run): (a) fused_head peak memory <= 1/4 of eager, (b) fused_head step
>= 1.5x eager tokens/s on CPU. ``--kd-micro`` adds the kd_loss micro table of bench_kd_loss.
Each step implementation's first loss is compared with eager's (``loss_vs_eager``, ``agrees``);
a disagreement is recorded, not fatal.

    python benchmarks/kd_throughput.py [--quick] [--toy] [--device cpu|cuda] [--batch 8] [--seq 64]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import print_table, sync, time_fn, write_results  # noqa: E402
from l2kd.ops import backend, kd_loss  # noqa: E402
from l2kd.ops.linear_kd_loss import linear_kd_loss  # noqa: E402

TEMPERATURE = 2.0
CHUNK = 256
LOSS_VARIANTS = ["eager", "unfused_op", "fused_head", "torch_compile"]
LOSS_COLUMNS = ["impl", "N", "H", "V", "median_ms", "p20_ms", "p80_ms", "gflop_s", "speedup", "peak_mb", "mem_ratio"]
STEP_COLUMNS = ["impl", "batch", "seq", "median_ms", "p20_ms", "p80_ms", "tokens_per_s", "speedup", "peak_mb",
                "mem_ratio", "loss_vs_eager", "agrees"]
# GPT-2 shapes of the step tables; vocab 50261 = GPT-2's plus LAMOL's special tokens.
MODEL_SHAPES = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 128},
    "gpt2-small": {"n_layer": 12, "n_head": 12, "n_embd": 768},
    "toy": {"n_layer": 2, "n_head": 2, "n_embd": 64, "vocab_size": 1000, "bos_token_id": 0, "eos_token_id": 0},
}
VOCAB = 50261


# ----------------------------------------------------------------------------- memory helpers
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_hwm() -> bool:
    """Reset the resident-set high-water mark (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_peak_mb(fn: Callable[[], object], first: bool) -> float:
    """Resident-set high-water mark during ``fn()`` minus the resident set before it, in MB."""
    before = _status_kb("VmRSS")
    if _reset_hwm():
        fn()
        return (_status_kb("VmHWM") - before) / 1024
    fn()  # no reset: ru_maxrss is only meaningful the first time
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 if first else float("nan")


def eager_kd(s: torch.Tensor, t: torch.Tensor, T: float) -> torch.Tensor:
    """The original L2KD formulation: KLDivLoss(batchmean)(log_softmax(s/T), softmax(t/T)) * T^2."""
    return F.kl_div(F.log_softmax(s / T, dim=-1), F.softmax(t / T, dim=-1), reduction="batchmean") * (T * T)


# ----------------------------------------------------------------------------- (a) loss part
def _loss_worker(variant: str, N: int, H: int, V: int) -> None:
    """Child process: build inputs, then answer "run" lines with one timed fwd+bwd each."""
    g = torch.Generator().manual_seed(0)
    hs = torch.randn(N, H, generator=g).requires_grad_()
    ws = (torch.randn(V, H, generator=g) * 0.05).requires_grad_()
    ht = torch.randn(N, H, generator=g)
    wt = torch.randn(V, H, generator=g) * 0.05

    def eager_loss(hs: torch.Tensor, ws: torch.Tensor, ht: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
        s = hs @ ws.t()
        with torch.no_grad():
            t = ht @ wt.t()
        return eager_kd(s, t, TEMPERATURE)

    compiled_loss = None
    if variant == "torch_compile":
        from benchmarks.peers import compiled

        def warm(fn: Callable) -> None:
            hs.grad = ws.grad = None
            fn(hs, ws, ht, wt).backward()

        compiled_loss, why = compiled(eager_loss, warm)
        if compiled_loss is None:
            print(json.dumps({"ready": False, "error": why}), flush=True)
            return

    def run() -> torch.Tensor:
        hs.grad = ws.grad = None
        if compiled_loss is not None:
            loss = compiled_loss(hs, ws, ht, wt)
        elif variant == "fused_head":
            loss = linear_kd_loss(hs, ws, ht, wt, TEMPERATURE, chunk=CHUNK)
        else:
            s = hs @ ws.t()
            with torch.no_grad():
                t = ht @ wt.t()
            loss = eager_kd(s, t, TEMPERATURE) if variant == "eager" else kd_loss(s, t, None, TEMPERATURE)
        loss.backward()
        return loss.detach()

    print(json.dumps({"ready": True}), flush=True)
    first = True
    for line in sys.stdin:
        if line.strip() != "run":
            break
        hs.grad = ws.grad = None
        out: Dict[str, object] = {}

        def timed() -> None:
            t0 = time.perf_counter()
            out["loss"] = run().item()
            out["ms"] = (time.perf_counter() - t0) * 1e3

        out["peak_mb"] = rss_peak_mb(timed, first)
        out["gh"] = hs.grad.double().norm().item()
        out["gw"] = ws.grad.double().norm().item()
        first = False
        print(json.dumps(out), flush=True)


def run_loss_bench(N: int, H: int, V: int, reps: int) -> List[Dict[str, object]]:
    procs = {v: subprocess.Popen([sys.executable, os.path.abspath(__file__), "--_worker", v, "--N", str(N),
                                  "--H", str(H), "--V", str(V)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True) for v in LOSS_VARIANTS}
    try:
        skipped: Dict[str, str] = {}
        for v, p in list(procs.items()):
            hello = json.loads(p.stdout.readline())
            if not hello.get("ready"):  # a peer that could not start (compile failure): recorded, not timed
                skipped[v] = str(hello.get("error", "worker not ready"))
                p.wait()
                del procs[v]
        results: Dict[str, List[Dict[str, float]]] = {v: [] for v in procs}
        for _ in range(reps + 1):  # round 0: peak memory + warm-up (and the agreement check)
            for v, p in procs.items():
                p.stdin.write("run\n")
                p.stdin.flush()
                line = p.stdout.readline()
                if not line:
                    raise RuntimeError(f"loss worker {v} died")
                results[v].append(json.loads(line))
    finally:
        for p in procs.values():
            try:
                p.stdin.write("quit\n")
                p.stdin.close()
            except OSError:
                pass
            p.wait()
    ref = results["eager"][0]
    for v in results:  # agree before reading the timings
        r = results[v][0]
        for key in ("loss", "gh", "gw"):
            assert abs(r[key] - ref[key]) <= 1e-4 * abs(ref[key]) + 1e-6, (v, key, r[key], ref[key])
    flop = 4 * 2 * N * H * V  # student + teacher logits GEMMs, grad_h and grad_W GEMMs
    records = []
    for v in results:
        ts = sorted(r["ms"] for r in results[v][1:])
        q = lambda f: ts[min(len(ts) - 1, int(round(f * (len(ts) - 1))))]  # noqa: E731
        peaks = [r["peak_mb"] for r in results[v] if r["peak_mb"] == r["peak_mb"]]
        records.append({"impl": v, "N": N, "H": H, "V": V, "median_ms": q(0.5), "p20_ms": q(0.2), "p80_ms": q(0.8),
                        "gflop_s": flop / (q(0.5) / 1e3) / 1e9, "peak_mb": max(peaks) if peaks else float("nan"),
                        "loss": ref["loss"]})
    for r in records:
        r["speedup"] = records[0]["median_ms"] / r["median_ms"]
        r["mem_ratio"] = r["peak_mb"] / records[0]["peak_mb"]
    return records + [{"impl": v, "N": N, "H": H, "V": V, "skipped": why} for v, why in skipped.items()]


# ----------------------------------------------------------------------------- (b) training step
def gpt2(seed: int, device: torch.device, shape: str = "tiny"):
    """A randomly initialised GPT-2 of one of MODEL_SHAPES (seeded)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(**{"vocab_size": VOCAB, **MODEL_SHAPES[shape]}, n_positions=1024)
    return GPT2LMHeadModel(cfg).to(device)


def step_peers(device: torch.device) -> Dict[str, object]:
    """The Liger and CCE loss functions of the step (fn(hs, ws, ht, wt, labels) -> loss), or a reason."""
    from benchmarks.peers import import_peer, liger_fused_linear_kd

    out: Dict[str, object] = {}
    try:
        lfn, why = liger_fused_linear_kd(device)
    except Exception as exc:  # a peer's own failure is a recorded fact
        lfn, why = None, f"Liger-Kernel failed to set up: {type(exc).__name__}: {exc}"[:300]
    out["liger"] = (lambda hs, ws, ht, wt, labels: lfn(hs, ws, ht, wt, TEMPERATURE)) if lfn else why
    mod, why = import_peer("cut_cross_entropy", device)
    cce = getattr(mod, "linear_cross_entropy", None) if mod is not None else None
    out["cce"] = (lambda hs, ws, ht, wt, labels: cce(hs, ws, labels)) if cce else (
        why or "cut_cross_entropy has no linear_cross_entropy")
    return out


def make_step(student, teacher, opt, ids: torch.Tensor, mask: torch.Tensor, impl: str,
              peer_fn: Optional[Callable] = None) -> Callable[[], torch.Tensor]:
    from l2kd.losses import hidden_states

    labels = ids[mask]

    def step() -> torch.Tensor:
        if peer_fn is not None:
            with torch.no_grad():
                th = hidden_states(teacher, ids)[mask]
            hs = hidden_states(student, ids)[mask]
            loss = peer_fn(hs, student.get_output_embeddings().weight, th, teacher.get_output_embeddings().weight,
                           labels)
        elif impl == "fused_head":
            with torch.no_grad():
                th = hidden_states(teacher, ids)[mask]
            hs = hidden_states(student, ids)[mask]
            loss = linear_kd_loss(hs, student.get_output_embeddings().weight, th,
                                  teacher.get_output_embeddings().weight, TEMPERATURE, chunk=CHUNK)
        else:
            with torch.no_grad():
                t_logits = teacher(ids).logits
            s_logits = student(ids).logits
            if impl == "eager":
                loss = eager_kd(s_logits[mask], t_logits[mask], TEMPERATURE)
            else:
                loss = kd_loss(s_logits, t_logits, mask, TEMPERATURE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


STEP_IMPLS = ["eager", "fused_ops", "fused_head"]


def run_step_bench(device: torch.device, batch: int, seq: int, reps: int, warmup: int,
                   with_memory: bool, shape: str = "tiny", with_peers: bool = False) -> List[Dict[str, object]]:
    """Rows of one step table: each implementation's times, tokens/s, peak memory, first loss."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, MODEL_SHAPES[shape].get("vocab_size", VOCAB), (batch, seq), generator=g).to(device)
    # current-task rows: everything after a short "context" prefix (as QA + LM rows of one task)
    mask = torch.arange(seq)[None, :].expand(batch, seq) >= torch.randint(0, seq // 4, (batch, 1), generator=g)
    mask = mask.to(device)
    teacher = gpt2(1, device, shape).eval()
    impls: Dict[str, Optional[Callable]] = {name: None for name in STEP_IMPLS}
    skipped: Dict[str, str] = {}
    if with_peers:
        for name, fn in step_peers(device).items():
            if callable(fn):
                impls[name] = fn
            else:
                skipped[name] = str(fn)
    # same starting weights for all, compared on the first loss (dropout off for the check)
    first = {}
    for name, peer_fn in list(impls.items()):
        student = gpt2(2, device, shape).eval()
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
        try:
            first[name] = make_step(student, teacher, opt, ids, mask, name, peer_fn)().item()
        except Exception as exc:  # only peers can get here: l2kd's own variants are checked below
            if peer_fn is None:
                raise
            skipped[name] = f"failed: {type(exc).__name__}: {exc}"[:300]
            del impls[name]
        del student, opt

    steps = {}
    for name, peer_fn in impls.items():
        student = gpt2(2, device, shape).train()
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
        steps[name] = make_step(student, teacher, opt, ids, mask, name, peer_fn)
        for _ in range(warmup):
            steps[name]()
    # interleave the implementations round by round, so a change of machine load hits all alike
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            times[name].append(time_fn(step, device, warmup=0, reps=1)["median_ms"])
    records = []
    for name, step in steps.items():
        ts = sorted(times[name])
        q = lambda f: ts[min(len(ts) - 1, int(round(f * (len(ts) - 1))))]  # noqa: E731
        tm = {"median_ms": q(0.5), "p20_ms": q(0.2), "p80_ms": q(0.8)}
        peak = float("nan")
        if with_memory and device.type == "cpu":
            peak = rss_peak_mb(step, first=False)
        elif with_memory:
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            step()
            sync(device)
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        rel = abs(first[name] - first["eager"]) / max(abs(first["eager"]), 1e-30)
        records.append({"impl": name, "model": shape, "batch": batch, "seq": seq, **tm,
                        "tokens_per_s": batch * seq / (tm["median_ms"] / 1e3), "peak_mb": peak,
                        "first_loss": first[name], "loss_vs_eager": rel,
                        # peers compute another scaling or another loss: recorded, not required to agree
                        "agrees": rel <= 1e-4 if name in STEP_IMPLS else None})
    for r in records:
        r["speedup"] = records[0]["median_ms"] / r["median_ms"]
        r["mem_ratio"] = r["peak_mb"] / records[0]["peak_mb"]
    return records + [{"impl": name, "model": shape, "batch": batch, "seq": seq, "skipped": why}
                      for name, why in skipped.items()]


def _goal(name: str, ok: bool, text: str) -> str:
    return f"  goal {name}: {text} -> {'MET' if ok else 'NOT MET'}"


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=512 loss part, fewer repetitions (< 2 min)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--N", type=int, default=None, help="rows of the loss-part table (default 4096, quick 512)")
    ap.add_argument("--H", type=int, default=768)
    ap.add_argument("--V", type=int, default=50257)
    ap.add_argument("--skip-loss", action="store_true", help="skip table (a)")
    ap.add_argument("--kd-micro", action="store_true", help="also the kd_loss micro table of bench_kd_loss")
    ap.add_argument("--no-memory", action="store_true", help="skip the step peak-memory measurement")
    ap.add_argument("--no-json", action="store_true")
    ap.add_argument("--toy", action="store_true", help="table (b) only plus (c) at toy size: the code paths (dry runs)")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        _loss_worker(args._worker, args.N, args.H, args.V)
        return
    device = torch.device(args.device)
    load0 = os.getloadavg()
    print(f"backend={backend()} device={device} threads={torch.get_num_threads()} T={TEMPERATURE} chunk={CHUNK} "
          f"loadavg(1,5,15)={load0[0]:.2f},{load0[1]:.2f},{load0[2]:.2f}")

    loss_recs: List[Dict[str, object]] = []
    if not args.skip_loss and device.type == "cpu" and not args.toy:
        N = args.N or (512 if args.quick else 4096)
        reps = 2 if args.quick else 3
        print(f"\n(a) KD loss part fwd+bwd, N={N} H={args.H} V={args.V} fp32, worker process per variant, "
              f"{reps} timed rounds round-robin (+1 round for memory/warm-up)")
        loss_recs = run_loss_bench(N, args.H, args.V, reps)
        print_table([r for r in loss_recs if "skipped" not in r], LOSS_COLUMNS)
        for r in loss_recs:
            if "skipped" in r:
                print(f"  {r['impl']} not timed: {r['skipped']}")
    elif not args.skip_loss:
        print("\n(a) skipped: " + ("--toy" if args.toy else "the worker-process memory measurement is CPU-only"))

    micro: List[Dict[str, object]] = []
    if args.kd_micro:
        from benchmarks.bench_kd_loss import COLUMNS as MICRO_COLUMNS
        from benchmarks.bench_kd_loss import run_micro

        print("\nkd_loss fwd+bwd micro table")
        micro = run_micro(device, args.quick, True)
        print_table(micro, MICRO_COLUMNS)

    print(f"\n(b) Word-KD training step, tiny GPT-2 (2x128, vocab 50261), batch {args.batch}x{args.seq} tokens")
    reps, warmup = (3, 1) if args.quick else (7, 2)
    steps: List[Dict[str, object]] = []
    if args.toy:
        print("  skipped: --toy (table (c) runs the same step code at toy size)")
    else:
        steps = run_step_bench(device, args.batch, args.seq, reps, warmup, not args.no_memory)
        print_table(steps, STEP_COLUMNS)

    big = "gpt2-small" if device.type == "cuda" and not args.toy else "toy"
    print(f"\n(c) Word-KD training step, {big} GPT-2 ({MODEL_SHAPES[big]['n_layer']}x{MODEL_SHAPES[big]['n_embd']}, "
          f"vocab {MODEL_SHAPES[big].get('vocab_size', VOCAB)}, random init), batch {args.batch}x{args.seq} tokens, "
          "with the Liger / CCE peers"
          + ("" if big == "gpt2-small" else " (toy size: GPT-2 small runs on CUDA only)"))
    big_steps = run_step_bench(device, args.batch, args.seq, reps, warmup, not args.no_memory, big, with_peers=True)
    print_table([r for r in big_steps if "skipped" not in r], STEP_COLUMNS)
    for r in big_steps:
        if "skipped" in r:
            print(f"  {r['impl']} not timed: {r['skipped']}")
    for r in steps + big_steps:
        if r.get("agrees") is False:
            print(f"  {r.get('model')} {r['impl']}: first loss differs from eager's by {r['loss_vs_eager']:.2e} (> 1e-4)")

    load1 = os.getloadavg()
    print(f"\nloadavg(1,5,15) at end = {load1[0]:.2f},{load1[1]:.2f},{load1[2]:.2f} on {os.cpu_count()} cores")
    goals = {}
    if loss_recs:
        r = {x["impl"]: x for x in loss_recs}
        goals["loss_mem_ratio"] = r["fused_head"]["peak_mb"] / r["eager"]["peak_mb"]
        print(_goal("(a) memory", goals["loss_mem_ratio"] <= 0.25,
                    f"fused_head / eager peak = {goals['loss_mem_ratio']:.3f} (<= 0.25)"))
    if steps:
        s = {x["impl"]: x for x in steps}
        goals["step_speedup"] = s["fused_head"]["tokens_per_s"] / s["eager"]["tokens_per_s"]
        print(_goal("(b) step", goals["step_speedup"] >= 1.5,
                    f"fused_head / eager tokens/s = {goals['step_speedup']:.2f}x (>= 1.5x)"))
    b = {x["impl"]: x for x in big_steps if "skipped" not in x}
    goals[f"step_speedup_{big}"] = b["fused_head"]["tokens_per_s"] / b["eager"]["tokens_per_s"]
    goals[f"step_mem_ratio_{big}"] = b["fused_head"]["mem_ratio"]
    print(f"  (c) {big}: fused_head / eager tokens/s = {goals[f'step_speedup_{big}']:.2f}x, "
          f"peak memory ratio {goals[f'step_mem_ratio_{big}']:.3f}")

    if not args.no_json:
        records = ([{"table": "loss_part", **r} for r in loss_recs] + [{"table": "kd_loss", **r} for r in micro]
                   + [{"table": "train_step", **r} for r in steps]
                   + [{"table": f"train_step_{big.replace('-', '_')}", **r} for r in big_steps])
        path = write_results("kd_throughput", device, records,
                             {"temperature": TEMPERATURE, "chunk": CHUNK, "batch": args.batch, "seq": args.seq,
                              "quick": args.quick, "toy": args.toy, "step_models": ["tiny", big],
                              "loss_part": {"N": args.N or (512 if args.quick else 4096),
                                                                 "H": args.H, "V": args.V, "dtype": "float32"},
                              "model": "GPT2 n_layer=2 n_head=2 n_embd=128 vocab=50261", "optimizer": "AdamW lr=1e-4",
                              "loadavg_start": load0, "loadavg_end": load1, "goals": goals})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
