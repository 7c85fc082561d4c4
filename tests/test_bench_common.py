"""The benchmarks' shared helpers: the floor's bandwidth and arithmetic, interleaved timing."""
from __future__ import annotations

import math

import pytest
import torch


def test_floor_adds_read_and_write_time_at_their_own_bandwidths(load_benchmark):
    c = load_benchmark("common")
    bw = c.Bandwidth(read_gbps=20.0, write_gbps=10.0, source="test")
    # 2 GB read at 20 GB/s = 100 ms, 1 GB written at 10 GB/s = 100 ms.
    assert bw.floor_ms(2e9, 1e9) == pytest.approx(200.0)
    assert bw.floor_ms(2e9) == pytest.approx(100.0)
    assert bw.record() == {"read_gbps": 20.0, "write_gbps": 10.0, "bandwidth_source": "test"}


def test_environment_fixes_the_bandwidth(load_benchmark, monkeypatch):
    c = load_benchmark("common")
    monkeypatch.setenv(c.BANDWIDTH_ENV, "14")
    bw = c.measure_bandwidth(torch.device("cpu"))
    assert (bw.read_gbps, bw.write_gbps, bw.source) == (14.0, 14.0, c.BANDWIDTH_ENV)


def test_measured_bandwidth_is_a_finite_positive_rate(load_benchmark, monkeypatch):
    c = load_benchmark("common")
    monkeypatch.delenv(c.BANDWIDTH_ENV, raising=False)
    bw = c.measure_bandwidth(torch.device("cpu"), nbytes=8 * 2**20, reps=3)
    for v in (bw.read_gbps, bw.write_gbps):
        assert math.isfinite(v) and v > 0
    assert bw.source.startswith("measured")


def test_interleaved_timing_alternates_the_implementations(load_benchmark):
    c = load_benchmark("common")
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    out = c.time_interleaved(fns, torch.device("cpu"), warmup=1, reps=3)
    assert calls == ["a", "b"] * 4  # 1 warm-up round, then 3 timed rounds, never a-a-a then b-b-b
    assert set(out) == {"a", "b"}
    for r in out.values():
        assert 0 <= r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
