"""Cut data: the first 300 training and 60 test examples of rnnlg.rest / rnnlg.hotel."""
import json, os
src = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "l2kd", "resources", "data")
out = os.path.join(os.environ["PARITY_HOME"], "data")
os.makedirs(out, exist_ok=True)
for task in ("rnnlg.rest", "rnnlg.hotel"):
    for split, n in (("train", 300), ("test", 60)):
        name = f"{task}_to_squad-{split}-v2.0.json"
        d = json.load(open(os.path.join(src, name)))
        d["data"] = d["data"][:n]
        json.dump(d, open(os.path.join(out, name), "w"))
        print(name, len(d["data"]))
