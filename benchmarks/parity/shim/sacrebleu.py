"""Import-only stand-in (see README.md in this folder)."""


def corpus_bleu(*args, **kwargs):
    raise RuntimeError("sacrebleu stand-in: BLEU is not used on the tasks of the side-by-side run")
