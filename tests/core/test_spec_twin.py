"""spec/nonlocal.md, its twin spec/nonlocal.toml and the code say the same thing."""

from __future__ import annotations

import dataclasses
import itertools
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from nonlocal_core import (
    INSTANTIATIONS,
    NORMS,
    SPEC_VERSION,
    NonLocalConfig,
    init_weights,
    weight_shapes,
)

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "spec" / "nonlocal.md"
TWIN = tomllib.loads((ROOT / "spec" / "nonlocal.toml").read_text())


def test_markdown_tables_are_generated_from_the_twin():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "spec_tables.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


def test_versions_agree():
    assert TWIN["spec_version"] == SPEC_VERSION
    assert f"version {SPEC_VERSION}" in SPEC.read_text().splitlines()[0]


def test_twin_parameters_are_the_config_fields_in_order_with_their_defaults():
    fields = dataclasses.fields(NonLocalConfig)
    assert [p["name"] for p in TWIN["parameter"]] == [f.name for f in fields]
    for p, f in zip(TWIN["parameter"], fields):
        default = "required" if f.default is dataclasses.MISSING else repr(f.default)
        assert p["default"] == default, p["name"]


def _symbols(cfg: NonLocalConfig) -> dict[str, int]:
    ci = cfg.inter_channels
    return {"C": cfg.in_channels, "C'": ci, "C_ctx": cfg.context_channels, "2C'": 2 * ci}


CONFIGS = [
    NonLocalConfig(6, instantiation=inst, norm=norm, inter_channels=ci, context_channels=cc)
    for inst, norm, ci, cc in itertools.product(INSTANTIATIONS, NORMS, (None, 5), (None, 7))
    if not (inst == "gaussian" and cc is not None)
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_twin_weight_table_is_weight_shapes(cfg):
    expected = {}
    for w in TWIN["weight"]:
        if all(str(getattr(cfg, k)) in map(str, v) for k, v in w["when"].items()):
            expected[w["name"]] = tuple(_symbols(cfg)[s] for s in w["shape"])
    # spec: W-1 (exactly the tensors the config needs, in the canonical order)
    assert list(weight_shapes(cfg).items()) == list(expected.items())


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_twin_init_column_is_init_weights(cfg):
    init = {w["name"]: w["init"] for w in TWIN["weight"]}
    for name, value in init_weights(cfg, seed=0).items():
        rule = init[name]
        if rule.startswith("normal; zeros") and cfg.norm is None:
            rule = "zeros"
        if rule == "zeros":
            assert np.all(value == 0), name
        elif rule == "ones":
            assert np.all(value == 1), name
        else:
            assert rule.startswith("normal") and np.all(value != 0), name


def test_every_rule_of_the_spec_is_cited_by_a_test():
    """Each **[ID]** rule in spec/nonlocal.md is cited as `spec: ID` in some test file."""
    rules = set(re.findall(r"\*\*\[([A-Z]+-\d+)\]\*\*", SPEC.read_text()))
    assert len(rules) > 20
    cited: set[str] = set()
    for folder in ("tests", "conformance"):
        for path in (ROOT / folder).rglob("*.py"):
            for line in path.read_text().splitlines():
                if "spec:" in line:
                    cited |= set(re.findall(r"[A-Z]+-\d+", line.split("spec:", 1)[1]))
    assert sorted(rules - cited) == []
