"""Collect per-run figures and print the parity tables (markdown) + a JSON dump.
usage: make_table.py SEED...   (reads runs/, timings/)"""
import glob, json, os, re, statistics as st, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from score import score_run

H = os.environ["PARITY_HOME"]
TASKS = ["rnnlg.rest", "rnnlg.hotel"]

def run_dir(system, mode, seed):
    sub = "gpt2" if system == "orig" else "init"
    return f"{H}/runs/{system}-{mode}/{sub}/lll/rnnlg.rest_rnnlg.hotel_0.2_{seed}"

def timing(tag):
    p = f"{H}/timings/{tag}.time"
    if not os.path.exists(p):
        return None
    t = open(p).read()
    g = lambda k: re.search(re.escape(k) + r": (.+)", t).group(1).strip()
    wall = g("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")
    wall = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall)))
    return {"wall_s": wall, "cpu_s": float(g("User time (seconds)")) + float(g("System time (seconds)")),
            "rss_mib": int(g("Maximum resident set size (kbytes)")) / 1024, "exit": int(g("Exit status"))}

def steps(system, mode, seed):
    d = run_dir(system, mode, seed)
    if system == "orig":
        p = f"{d}/parity_steps.jsonl"
        recs = [json.loads(l) for l in open(p)] if os.path.exists(p) else []
        out = {}
        for r in recs:
            out.setdefault(r["task"], []).append(r)
        return out
    p = f"{d}/train_scalars.jsonl"
    recs = [json.loads(l) for l in open(p)] if os.path.exists(p) else []
    out = {}
    for r in recs:
        if "loss" in r and "event" not in r:
            out.setdefault(r["task"], []).append(r)
    return out

def pseudo(system, mode, seed):
    d = run_dir(system, mode, seed)
    if system == "orig":
        log = open(f"{d}/log_train.txt").read() if os.path.exists(f"{d}/log_train.txt") else ""
        gen = re.findall(r"extra training data size: (\d+)", log)
        lens = re.findall(r"len of train dataset: (\d+)", log)
        if len(gen) < 2 or len(lens) < 2:
            return None
        return int(gen[1]), int(lens[1]) - 300
    p = f"{d}/train_scalars.jsonl"
    for l in open(p) if os.path.exists(p) else []:
        r = json.loads(l)
        if r.get("event") == "replay":
            return r.get("generated"), r.get("parsed")
    return None

def one(system, mode, seed):
    d = run_dir(system, mode, seed)
    sc = score_run(d) if os.path.isdir(d) else {}
    R = [[sc.get(a, {}).get(b, {}).get("avg_rouge") for b in TASKS] for a in TASKS]
    s = steps(system, mode, seed)
    t1 = s.get(TASKS[0], [])
    n_ex = sum(r.get("n_inputs", 0) for rs in s.values() for r in rs) if system == "orig" else None
    tr, te = timing(f"{system}-{mode}-s{seed}-train"), timing(f"{system}-{mode}-s{seed}-test")
    ps = pseudo(system, mode, seed)
    if n_ex is None and ps:  # l2kd: 2 epochs x (300 + 300 + parsed)
        n_ex = 2 * (300 + 300 + ps[1])
    return {"system": system, "mode": mode, "seed": seed, "R": R,
            "final": (R[1][0] + R[1][1]) / 2 if None not in R[1] else None,
            "pseudo": ps, "loss_t1": [r["loss"] for r in t1],
            "train": tr, "test": te, "examples": n_ex,
            "ex_per_s": n_ex / tr["wall_s"] if tr and n_ex else None,
            "ex_per_cpu_s": n_ex / tr["cpu_s"] if tr and n_ex else None}

def f(x, nd=1):
    return "" if x is None else f"{x:.{nd}f}"

if __name__ == "__main__":
    seeds = [int(x) for x in sys.argv[1:]] or [2, 3]
    rows = [one(sy, mo, se) for mo in ("lll", "distil") for se in seeds for sy in ("orig", "l2kd")]
    rows = [r for r in rows if r["train"]]
    json.dump(rows, open(f"{H}/results.json", "w"), indent=1)
    print("| run | seed | rest/rest | hotel/rest | rest/hotel | hotel/hotel | final avg | pseudo gen/parsed |")
    for r in rows:
        R = r["R"]; ps = r["pseudo"]
        print(f"| {r['system']} {r['mode']} | {r['seed']} | {f(R[0][0])} | {f(R[0][1])} | {f(R[1][0])} | {f(R[1][1])} | "
              f"{f(r['final'])} | {'' if not ps else f'{ps[0]} / {ps[1]}'} |")
    print("\n| run | seed | loss@1 | loss@10 | loss@50 | train wall s | train CPU s | ex/s wall | ex/CPU-s | peak RSS MiB | test wall s | test CPU s |")
    for r in rows:
        L = r["loss_t1"]; tr, te = r["train"], r["test"] or {}
        g = lambda i: f(L[i - 1], 2) if len(L) >= i else ""
        print(f"| {r['system']} {r['mode']} | {r['seed']} | {g(1)} | {g(10)} | {g(50)} | {f(tr['wall_s'],0)} | {f(tr['cpu_s'],0)} | "
              f"{f(r['ex_per_s'],2)} | {f(r['ex_per_cpu_s'],2)} | {f(tr['rss_mib'],0)} | {f(te.get('wall_s'),0)} | {f(te.get('cpu_s'),0)} |")
    print("\nloss curve, first 50 steps of task 1: max |orig - l2kd|")
    for mo in ("lll", "distil"):
        for se in seeds:
            a = [r for r in rows if r["mode"] == mo and r["seed"] == se]
            if len(a) == 2 and len(a[0]["loss_t1"]) >= 50 and len(a[1]["loss_t1"]) >= 50:
                d = [abs(x - y) for x, y in zip(a[0]["loss_t1"][:50], a[1]["loss_t1"][:50])]
                i = max(range(50), key=lambda k: d[k])
                print(f"{mo} seed {se}: max {max(d):.3f} at step {i+1}; mean {sum(d)/50:.3f}; steps 1-10 max {max(d[:10]):.4f}")
