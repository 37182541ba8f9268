"""Running the conformance suite in-process against an adapter, for the meta-tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import settings

import nonlocal_conformance.tests as suite_tests

SUITE_DIR = Path(suite_tests.__file__).parent

# The ci profile (the same derandomized examples, as many) without shrinking: every mutant
# must be caught by what CI runs, and a bug is caught on its first failing example, so
# shrinking it (which ci does, to print a small counterexample) would only cost time here.
settings.register_profile(
    "meta",
    parent=settings.get_profile("ci"),
    phases=[p for p in settings.get_profile("ci").phases if p.name != "shrink"],
)


def run_suite(
    backend: str, tmp_path: Path, *extra: str, dtype: str = "float64"
) -> tuple[int, dict]:
    """(exit code, JSON report) of one in-process run of the suite."""
    report = tmp_path / "report.json"
    previous = settings.get_current_profile_name()
    try:
        code = pytest.main(
            [
                str(SUITE_DIR),
                "-q",
                "--no-header",
                "-p",
                "no:cacheprovider",
                f"--backend={backend}",
                f"--dtype={dtype}",
                "--hypothesis-profile=meta",
                f"--conformance-report={report}",
                *extra,
            ]
        )
    finally:
        settings.load_profile(previous)
    data = json.loads(report.read_text()) if report.exists() else {}
    return int(code), data


def failed_checks(report: dict) -> set[str]:
    """The check names with at least one failed record."""
    return {t["check"] for t in report.get("tests", []) if t["outcome"] == "failed"}
