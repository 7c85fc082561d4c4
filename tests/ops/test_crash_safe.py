"""The crash-safe error-path helper of tests/ops/conftest.py."""
from __future__ import annotations

import faulthandler
import os
import signal

import pytest


def test_a_crashing_call_fails_one_test_with_a_message(raises_safely):
    def crash():
        faulthandler.disable()  # a real crash's stack is worth printing; this simulated one is not
        os.kill(os.getpid(), signal.SIGSEGV)

    with pytest.raises(pytest.fail.Exception, match="killed its .forked. process by SIGSEGV"):
        raises_safely(RuntimeError, "x", crash)


def test_assertions_of_pytest_raises_are_kept(raises_safely):
    raises_safely(RuntimeError, "bad shape", lambda: (_ for _ in ()).throw(RuntimeError("op: bad shape (5)")))
    raises_safely((TypeError, ValueError), "k must", lambda: (_ for _ in ()).throw(ValueError("k must be >= 1")))
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        raises_safely(RuntimeError, "x", lambda: None)
    with pytest.raises(pytest.fail.Exception, match="raised KeyError"):
        raises_safely(RuntimeError, "x", lambda: {}["missing"])
    with pytest.raises(AssertionError, match="Regex pattern did not match"):
        raises_safely(RuntimeError, "other text", lambda: (_ for _ in ()).throw(RuntimeError("op: bad shape")))
