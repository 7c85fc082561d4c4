"""Fixtures of the fault suite."""
from __future__ import annotations

import pytest

from faults_helpers import argv
from l2kd import train as train_cli


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    """A finished two-task finetune run (its root); tests copy it before damaging it."""
    root = tmp_path_factory.mktemp("finished")
    assert train_cli.main(argv(data_dir, root)) == 0
    return root
