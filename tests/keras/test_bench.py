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
    assert {r["strategy"] for r in rows if r["impl"] == "pairwise"} == {"pairwise"}
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
