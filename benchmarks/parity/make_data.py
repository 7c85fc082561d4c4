"""Cut data: the first N training and M test examples of rnnlg.rest / rnnlg.hotel.
usage: make_data.py [OUT [N_TRAIN [N_TEST]]]   (default $PARITY_HOME/data, 300, 60)"""
import json, os, sys

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "l2kd", "resources", "data")
TASKS = ("rnnlg.rest", "rnnlg.hotel")


def cut_data(out, n_train=300, n_test=60, tasks=TASKS):
    """Write the cut task files into ``out``; returns {task: {"train": n, "test": n}} as written."""
    os.makedirs(out, exist_ok=True)
    sizes = {}
    for task in tasks:
        for split, n in (("train", n_train), ("test", n_test)):
            name = f"{task}_to_squad-{split}-v2.0.json"
            with open(os.path.join(SRC, name)) as f:
                d = json.load(f)
            d["data"] = d["data"][:n]
            with open(os.path.join(out, name), "w") as f:
                json.dump(d, f)
            sizes.setdefault(task, {})[split] = len(d["data"])
    return sizes


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.environ["PARITY_HOME"], "data")
    n = [int(x) for x in sys.argv[2:4]]
    print(json.dumps(cut_data(out, *n)))
