"""The suite catches each deliberately wrong adapter, with the check named for the bug."""

from __future__ import annotations

import pytest

from nonlocal_conformance.mutants import MUTANTS

from .runner import failed_checks, run_suite


@pytest.mark.parametrize("mutant", list(MUTANTS), ids=lambda m: m.__name__)
def test_suite_fails_mutant_in_the_check_for_its_bug(mutant, tmp_path):
    expected = MUTANTS[mutant]
    code, report = run_suite(
        f"nonlocal_conformance.mutants:{mutant.__name__}",
        tmp_path,
        "-k",
        " or ".join(expected),
    )
    assert code == pytest.ExitCode.TESTS_FAILED, f"the suite passed {mutant.__name__}"
    missed = set(expected) - failed_checks(report)
    assert not missed, f"{mutant.__name__} ({mutant.__doc__}) not caught by {sorted(missed)}"


def test_suite_passes_the_reference_on_the_same_checks(tmp_path):
    """The control: the checks the mutants fail pass on the unmodified reference."""
    checks = sorted({c for expected in MUTANTS.values() for c in expected})
    code, report = run_suite("numpy", tmp_path, "-k", " or ".join(checks))
    assert code == pytest.ExitCode.OK, failed_checks(report)
    assert report["totals"]["failed"] == 0 and report["totals"]["passed"] > 20
