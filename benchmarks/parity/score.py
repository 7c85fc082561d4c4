"""One scorer for both systems: avg_rouge = mean of ROUGE-1/2/Lsum F1 x 100 (rouge-score, Porter
stemming, text split into sentences at '.', best over references) over a qa_<task>_<epoch>.csv.
The original writes y as a Python list repr, l2kd as a JSON list: both are read.
usage: score.py RUN_DIR  -> prints JSON {"R": {load_task: {eval_task: avg_rouge}}}"""
import ast, csv, glob, json, os, re, sys
from rouge_score import rouge_scorer

SC = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=True)

def sents(t):
    return "\n".join(s.strip() for s in t.split(".") if s.strip())

def parse_y(s):
    try:
        v = json.loads(s)
    except Exception:
        v = ast.literal_eval(s)
    return [v] if isinstance(v, str) else list(v)

def score_csv(path):
    rows = list(csv.DictReader(open(path, encoding="utf-8")))
    tot = [0.0, 0.0, 0.0]
    for r in rows:
        refs = [sents(x) for x in (parse_y(r["y"]) or [""])]
        s = SC.score_multi(refs, sents(r["pred"]))
        tot[0] += s["rouge1"].fmeasure; tot[1] += s["rouge2"].fmeasure; tot[2] += s["rougeLsum"].fmeasure
    r1, r2, rl = (100 * t / len(rows) for t in tot)
    return {"rouge1": r1, "rouge2": r2, "rougeL": rl, "avg_rouge": (r1 + r2 + rl) / 3, "n": len(rows)}

def score_run(run):
    out = {}
    for p in sorted(glob.glob(os.path.join(run, "*", "qa_*.csv"))):
        load = os.path.basename(os.path.dirname(p))
        m = re.match(r"qa_(.+)_(\d+)\.csv$", os.path.basename(p))
        out.setdefault(load, {})[m.group(1)] = score_csv(p)
    return out

if __name__ == "__main__":
    print(json.dumps(score_run(sys.argv[1]), indent=1))
