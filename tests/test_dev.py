"""`./dev test` (what CI runs) exits non-zero when any step fails, and says which.

Each test copies the working tree into a temporary folder, breaks one thing there (a failing
unit test, a lint error, a conformance failure, a docs warning), runs the real `./dev test`
on the copy with only the steps concerned, and reads its exit status and summary. The copy
shares this checkout's .venv, so `./dev` finds its set-up done and runs the steps at once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import mutations  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (ROOT / ".venv" / ".dev-stamp").is_file() or shutil.which("git") is None,
    reason="needs ./dev's .venv (run ./dev setup) and git",
)


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the checkout's tracked and unignored files, sharing its .venv."""
    copy = mutations.copy_tree(ROOT, tmp_path / "repo")
    (copy / ".venv").symlink_to(ROOT / ".venv")
    return copy


def dev(tree: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run the copy's ./dev with `args`; stdout and stderr together in `.stdout`."""
    result = subprocess.run(
        ["bash", str(tree / "dev"), *args],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": mutations.packages_path(tree), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    assert "setting up" not in result.stdout, "the copy should reuse the checkout's .venv"
    return result


def summary(result: subprocess.CompletedProcess) -> dict[str, str]:
    """{step: "ok" | "FAILED"} from the table `./dev test` prints last."""
    table = result.stdout.split("== ./dev test summary", 1)[-1]
    rows = (line.split() for line in table.splitlines())
    return {row[0]: row[1] for row in rows if len(row) == 4 and row[3] == "s"}


def test_the_lint_step_passes_on_the_unmodified_tree(tree):
    result = dev(tree, "test", "lint")
    assert result.returncode == 0, result.stdout
    assert summary(result) == {"lint": "ok"}


def test_a_lint_error_fails_the_job_though_the_format_check_after_it_passes(tree):
    (tree / "nonlocal_core" / "unused_import.py").write_text("import os\n")
    result = dev(tree, "test", "lint")
    assert result.returncode != 0, result.stdout
    assert summary(result) == {"lint": "FAILED"}
    assert "./dev test FAILED: lint" in result.stdout


def test_a_failing_unit_test_fails_the_job_and_later_steps_still_run(tree):
    shutil.rmtree(tree / "tests")
    (tree / "tests").mkdir()
    (tree / "tests" / "test_one_passes_one_fails.py").write_text(
        "def test_passes():\n    assert True\n\n\ndef test_fails():\n    assert 1 == 2\n"
    )
    result = dev(tree, "test", "unit", "doctest")
    assert result.returncode != 0, result.stdout
    assert summary(result) == {"unit": "FAILED", "doctest": "ok"}
    assert "1 failed, 1 passed" in result.stdout


def test_a_conformance_failure_fails_the_job(tree):
    # A deliberately wrong adapter (the paper's formula without the logit scale) next to a
    # correct one: the correct one passing must not hide the other's failure.
    mutant = "nonlocal_conformance.mutants:NoLogitScale"
    result = dev(tree, "test", "conformance", DEV_BACKENDS=f"{mutant} numpy")
    assert result.returncode != 0, result.stdout[-3000:]
    assert summary(result) == {f"conformance-{mutant}": "FAILED", "conformance-numpy": "ok"}
    assert f"./dev test FAILED: conformance-{mutant}" in result.stdout
    assert "backend" in result.stdout.split("== conformance summary", 1)[1], "no summary table"


def test_a_docs_warning_fails_the_job(tree):
    page = tree / "docs" / "index.md"
    page.write_text(page.read_text() + "\nSee [a page that does not exist](missing.md).\n")
    result = dev(tree, "test", "docs")
    assert result.returncode != 0, result.stdout
    assert summary(result) == {"docs": "FAILED"}
    assert "missing.md" in result.stdout


def test_an_unknown_step_is_an_error_naming_it(tree):
    result = dev(tree, "test", "lint", "unit-tests")
    assert result.returncode == 2
    assert "unknown step 'unit-tests'" in result.stdout
    assert "== step lint" not in result.stdout, "nothing runs when a step name is wrong"
