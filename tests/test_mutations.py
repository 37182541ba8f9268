"""scripts/mutations.py stays usable: every mutation still applies to the current source and
names tests that exist, and a mutant is called killed, survived or stale correctly.

The full run (every mutant) is `./dev mutations`; here one real mutant and two controls run.
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mutations", ROOT / "scripts" / "mutations.py")
mutations = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = mutations  # dataclasses look their module up there
_spec.loader.exec_module(mutations)


@pytest.mark.parametrize("mutation", mutations.MUTATIONS, ids=lambda m: m.name)
def test_every_mutation_applies_and_names_existing_tests(mutation):
    assert mutations.stale(mutation) is None
    assert mutation.new != mutation.old and mutation.tests
    for node_id in mutation.tests:
        path, function = re.fullmatch(r"([^:]+)::(test_\w+)(\[.*\])?", node_id).group(1, 2)
        source = (ROOT / path).read_text(encoding="utf-8")
        assert re.search(rf"^def {function}\(", source, re.M), f"{node_id}: no such test"


def test_a_mutant_is_killed_survives_or_is_stale_as_it_should():
    (scale,) = [m for m in mutations.MUTATIONS if m.name == "core-default-scale-one-over-c"]
    assert mutations.run_mutation(scale).status == "killed"
    # The same value spelled another way (exact for the test's d = 4): the tests must pass.
    equivalent = dataclasses.replace(
        scale, name="equivalent", new="            return math.sqrt(self.embed_dim) ** -1\n"
    )
    assert mutations.run_mutation(equivalent).status == "survived"
    gone = dataclasses.replace(scale, name="gone", old="return 1.0 / no_such_code\n")
    outcome = mutations.run_mutation(gone)
    assert outcome.status == "stale" and "occurs 0 times" in outcome.detail


def test_docstring_examples():
    result = doctest.testmod(mutations)
    assert result.attempted > 0 and result.failed == 0
