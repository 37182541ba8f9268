"""`python -m nonlocal_keras.bench`: its memory probe sees real allocations, its rows and
tables are complete, and the command line runs a backend in a process of its own."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nonlocal_keras import bench

from .conftest import BACKEND


def test_peak_memory_probe_sees_an_allocation_and_its_absence():
    grew = bench.peak_rss_mib(lambda: np.ones(96 * 2**20 // 8).sum())  # 96 MiB, touched
    if grew is None:
        pytest.skip("this system cannot reset its peak resident set (/proc/self/clear_refs)")
    assert 90 < grew < 120
    assert bench.peak_rss_mib(lambda: None) < 5


def test_rows_and_table_for_both_forms():
    rows = [
        bench.run_case(bench.Case(inst, 4, 8, backward), impl, 1, 1.0)
        for inst in ("embedded_gaussian", "concatenation")
        for backward in (False, True)
        for impl in bench.IMPLS
    ]
    assert all(r["status"] == "ok" and r["time_ms"] > 0 for r in rows), rows
    assert {r["backend"] for r in rows} == {BACKEND}
    concatenation = {r["strategy"] for r in rows if r["instantiation"] == "concatenation"}
    assert concatenation == {"pairwise"}  # N = 16: auto materialises so small a matrix
    linear = bench.run_case(bench.Case("concatenation", 4, 8, True), "sorted", 1, 1.0)
    assert linear["status"] == "ok" and linear["strategy"] == "sorted" and linear["time_ms"] > 0
    lines = bench.table(rows).splitlines()
    assert len(lines) == 2 + 4 and all(line.count("|") == 10 for line in lines)
    skipped = bench.run_case(bench.Case("gaussian", 128, 8, True), "pairwise", 1, 0.5)
    assert skipped["status"] == "skipped: needs ~5.0 GiB (limit 0.5 GiB)"


@pytest.mark.skipif(BACKEND != "torch", reason="one command-line run is enough (torch: fastest)")
def test_command_line_smoke_run(tmp_path):
    doc = bench.main(["--mode", "smoke", "--backends", "torch", "--out", str(tmp_path)])
    assert len(doc["rows"]) == 4 * 2 * 2
    assert json.loads((tmp_path / "bench.json").read_text())["rows"] == doc["rows"]
    assert (tmp_path / "bench.md").read_text().count("\n") == 2 + 8
    assert (tmp_path / "bench.png").stat().st_size > 10_000


def test_bad_options_are_usage_errors(capsys):
    for argv in (["--backends", "tensorflow,cntk"], ["--naive-limit-gib", "0"]):
        with pytest.raises(SystemExit) as stop:
            bench.main(argv)
        assert stop.value.code == 2
    assert "--naive-limit-gib: '0' is invalid: expected a number > 0" in capsys.readouterr().err


def test_training_memory_of_the_chunked_softmax_stays_small():
    # N = N' = 4096, forward and backward: the pairwise form needs ~390 MiB on TensorFlow
    # and JAX, 195 on PyTorch; the chunked softmax holds a few 16 MiB chunks of logits at a
    # time, 139 MiB here (65 on JAX), about the same at every N. TensorFlow's eager tape
    # once kept every chunk's logits alive (277 MiB here, 4 GiB at N = 16384). Measured in
    # a process of the benchmark's own (its allocator settings), on this backend.
    import os
    import subprocess
    import sys

    code = (
        "from nonlocal_keras.bench import Case, run_case\n"
        "row = run_case(Case('embedded_gaussian', 64, 64, True), 'chunked', 1, 1.0, 'memory')\n"
        "print(row['extra_mib'])\n"
    )
    env = {**os.environ, **bench.MEMORY_ENV, "KERAS_BACKEND": BACKEND}
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    extra = run.stdout.strip().splitlines()[-1]
    if extra == "None":
        pytest.skip("this system cannot reset its peak resident set (/proc/self/clear_refs)")
    assert float(extra) < 170, f"{extra} MiB"
