"""Loaded by Python at start-up when this folder is on PYTHONPATH: adjusts two modules of the
original once they are imported (see README.md in this folder)."""
import importlib.abc
import os
import sys

NAN_ROUGE = {"rouge_1_f_score": float("nan"), "rouge_2_f_score": float("nan"), "rouge_l_f_score": float("nan")}


def _local_weights(module):
    """``from_pretrained("gpt2")`` of models, configs and tokenizers reads PARITY_INIT_DIR."""
    init = os.environ.get("PARITY_INIT_DIR")
    if not init:
        return
    for name in ("PreTrainedModel", "PretrainedConfig", "PreTrainedTokenizer"):
        cls = getattr(module, name, None)
        if cls is None:
            continue
        real = cls.from_pretrained.__func__

        def from_pretrained(klass, source, *args, _real=real, **kwargs):
            return _real(klass, init if source in ("gpt2",) else source, *args, **kwargs)

        cls.from_pretrained = classmethod(from_pretrained)


def _no_perl_rouge(module):
    """The original's ROUGE runs a Perl script; the harness scores its csv files instead."""
    if hasattr(module, "computeROUGE"):
        module.computeROUGE = lambda greedy, answer: dict(NAN_ROUGE)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``fixes[name](module)`` right after module ``name`` has executed."""

    def __init__(self, fixes):
        self.fixes = fixes

    def find_spec(self, name, path=None, target=None):
        if name not in self.fixes:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        inner, fix = spec.loader, self.fixes[name]

        class Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return inner.create_module(spec)

            def exec_module(self, module):
                inner.exec_module(module)
                fix(module)

        spec.loader = Loader()
        return spec


sys.meta_path.insert(0, _AfterImport({"pytorch_transformers": _local_weights, "metrics": _no_perl_rouge}))
