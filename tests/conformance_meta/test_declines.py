"""Declines are counted skips, never failures or silent passes (issue: the third-party trial).

The adapters of `third_party` are the reference restricted to three published blocks; a
run against each must have no failure, count its declined draws with their reasons, and skip
(not pass) a check whose every draw was declined.
"""

from __future__ import annotations

import dataclasses

import pytest

from nonlocal_conformance.adapter import Unsupported
from nonlocal_conformance.numpy_adapter import NumpyAdapter

from . import third_party
from .runner import run_suite


class BuildsOnlyThePaperBlock(NumpyAdapter):
    """Builds only 8-channel 3-D blocks: the paper's res4 example runs, the draws are declined."""

    name = "paper-block-only"

    def build(self, config, weights, *, dtype, device):
        if (config.in_channels, config.spatial_dims) != (8, 3):
            raise Unsupported("only the 8-channel video block")
        return super().build(config, weights, dtype=dtype, device=device)


class NoConcatenationAttention(NumpyAdapter):
    """Declares no attention for the concatenation only, and returns none for it."""

    name = "no-concatenation-attention"
    capabilities = dataclasses.replace(
        NumpyAdapter.capabilities, per_instantiation={"concatenation": {"attention": False}}
    )

    def forward(self, block, x, **kwargs):
        out = super().forward(block, x, **kwargs)
        if block.config.instantiation == "concatenation":
            out = dataclasses.replace(out, attention=None)
        return out


class DeclinesInvalidInputs(NumpyAdapter):
    """Declares input errors, then 'declines' an x of the wrong rank instead of rejecting it."""

    name = "declines-invalid-inputs"

    def forward(self, block, x, **kwargs):
        if x.ndim != block.config.spatial_dims + 2:
            raise Unsupported("x of another rank")
        return super().forward(block, x, **kwargs)


class DeclinesEverything(NumpyAdapter):
    """Builds nothing: every drawn example and every golden vector is declined."""

    name = "declines-everything"

    def build(self, config, weights, *, dtype, device):
        raise Unsupported("this adapter builds nothing")


# A naive adapter declines most draws, and each costs a draw and a reference: its runs take
# one check of each kind (values, gradients, weights, golden vectors).
NAIVE_CHECKS = (
    "test_output_matches_reference_in_inference or test_gradients_match_reference "
    "or test_mismatched_weights_are_rejected or test_golden_vector_is_reproduced"
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
    assert totals["passed"] >= (5 if naive else 20), totals  # the checks it can run, ran
    if naive:
        # Only the coarse fields declared: the rest is declined, and every decline counted
        # with its reason in the check that drew it.
        assert _declined(report) > 0.2 * _examples(report), (_declined(report), _examples(report))
        reasons = {r for t in report["tests"] for r in t.get("decline_reasons", {})}
        assert any("cannot express this config" in r for r in reasons), reasons
        assert not any("NonLocalConfig(" in r for r in reasons), "reasons name no config"
    else:
        # Declared capabilities: the explicit examples and golden vectors they allow run...
        replayed = [t for t in report["tests"] if t["check"] == "test_golden_vector_is_reproduced"]
        assert any(t["outcome"] == "passed" for t in replayed), "no golden vector replayed"
        # ...and the suite draws inside them, so (almost) nothing is declined.
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


def test_explicit_examples_that_ran_make_a_pass_when_every_draw_is_declined(tmp_path):
    check = "test_output_matches_reference_in_inference and embedded_gaussian-3"
    code, report = run_suite(f"{__name__}:BuildsOnlyThePaperBlock", tmp_path, "-k", check)
    assert code == pytest.ExitCode.OK, [t["detail"] for t in report["tests"]]
    (test,) = report["tests"]
    assert test["outcome"] == "passed" and test["examples"] >= 1 and test["declined"] > 0, test


def test_an_instantiation_without_attention_is_not_asked_for_it(tmp_path):
    checks = "key_mask or golden_vector or attention_matches"
    code, report = run_suite(f"{__name__}:NoConcatenationAttention", tmp_path, "-k", checks)
    failed = [t["nodeid"] for t in report["tests"] if t["outcome"] == "failed"]
    assert code == pytest.ExitCode.OK and not failed, failed
    concat = [t for t in report["tests"] if "concat" in t["nodeid"]]
    assert any(t["outcome"] == "passed" for t in concat), "concatenation still runs"


def test_declining_an_invalid_input_is_a_failure_not_a_skip(tmp_path):
    check = "test_input_of_wrong_rank_is_rejected"
    code, report = run_suite(f"{__name__}:DeclinesInvalidInputs", tmp_path, "-k", check)
    (test,) = report["tests"]
    assert code == pytest.ExitCode.TESTS_FAILED and test["outcome"] == "failed", test
    assert "raised Unsupported" in test["detail"], test["detail"]
