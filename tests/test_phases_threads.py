"""The e2e benchmark's phase recorder and the CPU thread policy (behaviour, no timings)."""
from __future__ import annotations

import importlib.util
import os
import sys
import types

from l2kd.threads import available_cpus, cgroup_cpu_limit, prefer_passive_wait, thread_policy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _phases():
    spec = importlib.util.spec_from_file_location("e2e_phases", os.path.join(ROOT, "benchmarks", "phases.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_nested_phases_report_self_time_and_other():
    mod = _phases()
    clock = FakeClock()
    hwm = {"kb": 100}
    rec = mod.PhaseRecorder(clock=clock, rss=(lambda: hwm["kb"], lambda: True))
    with rec.phase("teacher_train"):
        clock.t += 1.0
        with rec.phase("train_step", items=8):
            clock.t += 3.0
            hwm["kb"] = 500
        clock.t += 0.5
    with rec.phase("train_step", items=4):
        clock.t += 2.0
    rep = rec.report(total_seconds=10.0)
    assert rep["teacher_train"]["seconds"] == 1.5 and rep["teacher_train"]["inclusive_seconds"] == 4.5
    assert rep["teacher_train/train_step"]["seconds"] == 3.0 and rep["teacher_train/train_step"]["items"] == 8
    assert rep["train_step"]["items_per_s"] == 2.0
    assert rep["other"]["seconds"] == 10.0 - 4.5 - 2.0
    assert rep["teacher_train"]["peak_rss_mb"] == 500 / 1024  # the inner peak counts for the outer phase
    assert rec.largest(10.0)[0] == "other"


def test_wrap_times_calls_and_restores_the_attribute():
    mod = _phases()
    owner = types.SimpleNamespace(f=lambda xs: [x * 2 for x in xs])
    original = owner.f
    rec = mod.PhaseRecorder(rss=(lambda: None, lambda: False))
    with rec.wrap(owner, "f", "decode", lambda a, k, r: len(r)):
        assert owner.f([1, 2, 3]) == [2, 4, 6]
        owner.f([1])
    assert owner.f is original
    assert rec.stats["decode"].calls == 2 and rec.stats["decode"].items == 4


def test_thread_policy_follows_affinity_quota_and_user():
    assert thread_policy({}, affinity=[0, 1, 2, 3]).threads == 4
    assert thread_policy({}, affinity=range(64), quota=2.0).threads == 2
    assert thread_policy({}, affinity=range(64), quota=1.5).threads == 2
    assert thread_policy({"OMP_NUM_THREADS": "3"}, affinity=[0]).threads == 3
    assert thread_policy({"OMP_NUM_THREADS": "junk"}, affinity=[0, 1]).threads == 2
    assert thread_policy({}, affinity=[0, 1], load=9.0).threads == 2  # load is recorded, not used
    assert available_cpus([]) == 1


def test_cgroup_quota_parsing():
    assert cgroup_cpu_limit("200000 100000\n") == 2.0
    assert cgroup_cpu_limit("max 100000") is None
    assert cgroup_cpu_limit("garbage") is None


def test_passive_wait_only_when_user_did_not_choose_and_torch_not_loaded():
    env = {}
    assert prefer_passive_wait(env, modules={}) and env["OMP_WAIT_POLICY"] == "PASSIVE"
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert not prefer_passive_wait(env, modules={}) and env["OMP_WAIT_POLICY"] == "ACTIVE"
    env = {"GOMP_SPINCOUNT": "1000"}
    assert not prefer_passive_wait(env, modules={}) and "OMP_WAIT_POLICY" not in env
    env = {}
    assert not prefer_passive_wait(env, modules={"torch": object()}) and not env
