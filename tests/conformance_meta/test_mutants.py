"""The suite catches each deliberately wrong adapter, with the check named for the bug."""

from __future__ import annotations

import pytest

from nonlocal_conformance.mutants import MUTANTS

from .runner import failed_checks, run_suite


@pytest.mark.parametrize("mutant", list(MUTANTS), ids=lambda m: m.__name__)
def test_suite_fails_mutant_in_the_check_for_its_bug(mutant, tmp_path):
    """Each check named for the mutant fails it. One run per check, stopped at its first
    failure (a check is a test function, run once per parameter set: one failure is enough,
    and the others would only cost CI time)."""
    for check in MUTANTS[mutant]:
        code, report = run_suite(
            f"nonlocal_conformance.mutants:{mutant.__name__}",
            tmp_path,
            "-k",
            check,
            "--maxfail=1",
            dtype=getattr(mutant, "dtype_under_test", "float64"),
        )
        assert code == pytest.ExitCode.TESTS_FAILED, f"{check} passed {mutant.__name__}"
        assert check in failed_checks(report), (
            f"{mutant.__name__} ({mutant.__doc__}) not caught by {check}, but by "
            f"{sorted(failed_checks(report))}"
        )


@pytest.mark.parametrize(
    "dtype",
    sorted({getattr(m, "dtype_under_test", "float64") for m in MUTANTS}, reverse=True),
)
def test_suite_passes_the_reference_on_the_same_checks(tmp_path, dtype):
    """The control: the checks the mutants fail pass on the unmodified reference, at each
    dtype the mutants run at."""
    checks = sorted(
        {
            c
            for mutant, expected in MUTANTS.items()
            if getattr(mutant, "dtype_under_test", "float64") == dtype
            for c in expected
        }
    )
    code, report = run_suite("numpy", tmp_path, "-k", " or ".join(checks), dtype=dtype)
    assert code == pytest.ExitCode.OK, failed_checks(report)
    assert report["totals"]["failed"] == 0 and report["totals"]["passed"] >= len(checks)
