"""`./dev gpu` (scripts/gpu_check.py): the whole GPU check as one command, checked on the CPU.

The quick CPU flow (`./dev gpu --device cpu --quick`, which CI also runs as the `gpu-quick`
step) runs on a copy of the working tree, as in tests/test_dev.py: unchanged, every part
passes and the results folder holds what the GPU run would bring back; with a failing unit
test and a part over its time limit, the command fails and names both, while every other
part still runs and is reported. Without a GPU, the default CUDA run stops at once.
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.test_dev import ROOT, dev, mutations

QUICK = ("gpu", "--device", "cpu", "--quick")
PARTS = [
    "environment",
    "unit",
    "conformance-float32",
    "conformance-bfloat16",
    "forced-pairwise",
    "bench",
    "sidebyside",
    "summary",
]


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the checkout's tracked and unignored files, sharing its .venv (test_dev)."""
    copy = mutations.copy_tree(ROOT, tmp_path / "repo")
    (copy / ".venv").symlink_to(ROOT / ".venv")
    return copy


def parts(summary_md: str) -> dict[str, tuple[str, str]]:
    """{part: (status, exit code)} from the table of summary.md."""
    rows = re.findall(r"^\| ([\w.-]+) \| ([^|]+) \| (-?\d*) \| [\d.]+ \| \d+ \|$", summary_md, re.M)
    return {name: (status.strip(), code) for name, status, code in rows}


def sidebyside_status(tree: Path) -> str:
    present = (tree / "backends" / "nonlocal_torch" / "sidebyside.py").is_file()
    return "ok" if present else "absent: no module nonlocal_torch.sidebyside in this checkout"


def test_the_quick_cpu_run_passes_every_part_and_writes_the_results_folder(tree):
    result = dev(tree, *QUICK, "--out", "build/gpu-quick", OUT="", PY="")
    assert result.returncode == 0, result.stdout[-4000:]
    out = tree / "build" / "gpu-quick"
    summary = (out / "summary.md").read_text()
    table = parts(summary)
    assert list(table) == PARTS, summary
    for name, (status, code) in table.items():
        want = sidebyside_status(tree) if name == "sidebyside" else "ok"
        assert status == want, (name, summary)
        assert code == ("0" if status == "ok" else ""), (name, summary)
    assert "Every part passed." in summary and "./dev gpu passed" in result.stdout
    reports = sorted(p.name for p in (out / "conformance").glob("*.json"))
    assert reports == [
        "conformance-bfloat16.json",
        "conformance-float32.json",
        "forced-pairwise.json",
    ]
    for report in reports:
        totals = json.loads((out / "conformance" / report).read_text())["totals"]
        assert totals["passed"] > 0 and totals["failed"] == 0, (report, totals)
    forced = json.loads((out / "conformance" / "forced-pairwise.json").read_text())
    assert forced["options"]["strategy"] == "pairwise"
    assert json.loads((out / "bench" / "bench.json").read_text())["rows"]
    assert "## Conformance summary" in summary and "## Benchmark" in summary
    environment = (out / "environment.txt").read_text()
    assert "torch " in environment and "cuda available False" in environment
    logs = {p.stem for p in (out / "logs").iterdir()}
    assert logs == {name for name, (status, _) in table.items() if status == "ok"}


def test_a_failing_part_fails_the_command_and_the_others_still_run(tree):
    # A failing unit test, and the benchmark killed at a time limit of one second; packed as
    # for the GPU machine, whose $OUT brings back few files.
    module = tree / "tests" / "torch" / "test_module.py"
    module.write_text(module.read_text() + "\n\ndef test_planted_failure():\n    assert 1 == 2\n")
    out = tree / "out"
    out.mkdir()
    only = ["--only", "unit", "--only", "conformance-float32", "--only", "bench"]
    result = dev(
        tree, *QUICK, *only, "--only", "summary", "--limit", "bench=1", OUT=str(out), PY=""
    )
    assert result.returncode == 1, result.stdout[-4000:]
    assert "./dev gpu FAILED: unit bench" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["results.tar.gz", "summary.md"]
    table = parts((out / "summary.md").read_text())
    assert table == {
        "unit": ("FAILED (exit 1)", "1"),
        "conformance-float32": ("ok", "0"),
        "bench": ("TIMEOUT (killed after 1 s)", "-9"),
        "summary": ("ok", "0"),
    }
    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
        unit_log = tar.extractfile("logs/unit.log").read().decode()
    assert {"conformance/conformance-float32.json", "logs/bench.log"} <= names
    assert "test_planted_failure" in unit_log and "1 failed" in unit_log


def test_without_a_gpu_the_default_cuda_run_stops_at_once(tree):
    result = dev(tree, "gpu", "--out", "build/gpu", CUDA_VISIBLE_DEVICES="", OUT="", PY="")
    assert result.returncode == 2, result.stdout
    assert "no CUDA device: use --device cpu --quick to check the script" in result.stdout
    assert not (tree / "build" / "gpu").exists()


def test_a_missing_interpreter_is_named(tree):
    result = dev(tree, *QUICK, "--out", "build/gpu", PY=str(tree / "no-such-python"))
    assert result.returncode == 2, result.stdout
    assert "no-such-python cannot run the check" in result.stdout


def test_the_ci_step_runs_the_quick_check():
    script = (ROOT / "dev").read_text()
    assert "gpu-quick) gpu --device cpu --quick --out build/gpu-quick ;;" in script
    listed = subprocess.run(
        ["bash", "-c", "source <(sed -n '/^STEPS=(/,/)/p' dev); echo ${STEPS[*]}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "gpu-quick" in listed
