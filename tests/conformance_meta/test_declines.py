"""Declines are counted skips, never failures or silent passes (issue: the third-party trial).

The adapters of `third_party` are the reference restricted to three published blocks; a
run against each must have no failure, count its declined draws with their reasons, and skip
(not pass) a check whose every draw was declined.
"""

from __future__ import annotations

import pytest

from nonlocal_conformance.adapter import Unsupported
from nonlocal_conformance.numpy_adapter import NumpyAdapter

from . import third_party
from .runner import run_suite


class DeclinesEverything(NumpyAdapter):
    """Builds nothing: every drawn example and every golden vector is declined."""

    name = "declines-everything"

    def build(self, config, weights, *, dtype, device):
        raise Unsupported("this adapter builds nothing")


# A naive adapter declines most draws, and each costs a draw and a reference: its runs take
# one check of each kind (values, training, gradients, weights, identity, golden vectors).
NAIVE_CHECKS = (
    "test_output_matches_reference_in_inference or test_output_matches_reference_in_training "
    "or test_gradients_match_reference or test_mismatched_weights_are_rejected "
    "or test_block_is_the_identity or test_golden_vector_is_reproduced"
)


def _declined(report: dict) -> int:
    return sum(t.get("declined") or 0 for t in report["tests"])


def _examples(report: dict) -> int:
    return sum(t.get("examples") or 0 for t in report["tests"])


@pytest.mark.parametrize("adapter", third_party.ADAPTERS, ids=lambda a: a.name)
def test_a_published_block_is_declined_where_it_cannot_build_never_failed(adapter, tmp_path):
    naive = adapter.name.endswith("-naive")
    code, report = run_suite(
        f"{third_party.__name__}:{adapter.__name__}", tmp_path, *(["-k", NAIVE_CHECKS] * naive)
    )
    failed = [t["nodeid"] for t in report["tests"] if t["outcome"] == "failed"]
    assert code == pytest.ExitCode.OK and not failed, failed
    assert report["adapter_name"] == adapter.name
    totals = report["totals"]
    assert totals["passed"] >= (8 if naive else 20), totals  # the checks it can run, ran
    if naive:
        # Only the coarse fields declared: the rest is declined, and every decline counted
        # with its reason in the check that drew it.
        assert _declined(report) > 0.2 * _examples(report), (_declined(report), _examples(report))
        reasons = {r for t in report["tests"] for r in t.get("decline_reasons", {})}
        assert any("cannot express this config" in r for r in reasons), reasons
        assert not any("NonLocalConfig(" in r for r in reasons), "reasons name no config"
    else:
        # Declared capabilities: the suite draws inside them, so (almost) nothing is declined.
        assert _declined(report) <= 0.02 * _examples(report), (_declined(report), _examples(report))


def test_a_check_whose_every_draw_is_declined_is_skipped_with_the_reason(tmp_path):
    code, report = run_suite(f"{__name__}:DeclinesEverything", tmp_path, "-k", NAIVE_CHECKS)
    assert code == pytest.ExitCode.OK
    outcomes = {t["outcome"] for t in report["tests"]}
    assert outcomes == {"skipped"}, [
        t["nodeid"] for t in report["tests"] if t["outcome"] != "skipped"
    ]
    drawn = [t for t in report["tests"] if t["check"] != "test_golden_vector_is_reproduced"]
    for test in drawn:
        assert "declined" in test["detail"] and "this adapter builds nothing" in test["detail"]
        assert test["examples"] == 0 and test["declined"] > 0, test
