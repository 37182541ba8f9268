"""The operator page says what spec/nonlocal.md, spec/nonlocal.toml and the code say.

The page restates the spec in its own words and notation; these tests pin every fact that
can drift: the rules cited, the parameter table (names, order, defaults), the weight table
(names, shapes, when present), the instantiations and the windows ``subsample=True`` means.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import re
import tomllib
from pathlib import Path

import pytest

from nonlocal_core import (
    DEFAULT_WINDOWS,
    INSTANTIATIONS,
    NORMS,
    SPEC_VERSION,
    NonLocalConfig,
    weight_shapes,
)

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGE = (DOCS / "operator.md").read_text(encoding="utf-8")
SPEC = (ROOT / "spec" / "nonlocal.md").read_text(encoding="utf-8")
TWIN = tomllib.loads((ROOT / "spec" / "nonlocal.toml").read_text(encoding="utf-8"))

RULE = r"[A-Z]+-\d+"


def section(text: str, heading: str) -> str:
    """The text under a Markdown heading, up to the next heading of the same or higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.MULTILINE)
    assert match, f"heading {heading!r} not found"
    level = len(match[1])
    end = re.compile(rf"^#{{1,{level}}} ", re.MULTILINE).search(text, match.end())
    return text[match.end() : end.start() if end else len(text)]


def table(text: str) -> list[list[str]]:
    """The rows (header excluded) of the first Markdown table in `text`, cells stripped."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) >= 3, "no table found"
    split = lambda line: [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]  # noqa: E731
    return [split(line) for line in lines[2:]]


def code(cell: str) -> str:
    """The text of the single inline-code span in a cell."""
    spans = re.findall(r"`([^`]+)`", cell)
    assert len(spans) == 1, f"expected one code span in {cell!r}"
    return spans[0]


def test_the_page_cites_the_spec_version():
    assert f"(version {SPEC_VERSION})" in PAGE
    assert TWIN["spec_version"] == SPEC_VERSION


def test_every_spec_rule_is_cited_in_the_docs_and_no_other():
    rules = set(re.findall(rf"\*\*\[({RULE})\]\*\*", SPEC))
    assert len(rules) > 20, "the spec's rule markers changed: update this test"
    docs = "".join(p.read_text(encoding="utf-8") for p in DOCS.rglob("*.md"))
    cited = set(re.findall(rf"\(spec \*\*({RULE})\*\*", docs))
    assert sorted(rules - cited) == [], "spec rules the docs do not explain"
    assert sorted(cited - rules) == [], "the docs cite rules the spec does not have"
    # The operator page covers the operator; only the golden-vector format lives elsewhere.
    on_page = set(re.findall(rf"\(spec \*\*({RULE})\*\*", PAGE))
    assert sorted(rules - on_page) == ["VEC-1"]


def test_parameter_table_matches_the_twin_and_the_config():
    rows = table(section(PAGE, "Parameters"))
    fields = dataclasses.fields(NonLocalConfig)
    names = [code(row[0]) for row in rows]
    assert names == [f.name for f in fields] == [p["name"] for p in TWIN["parameter"]]
    for row, field, twin in zip(rows, fields, TWIN["parameter"]):
        if field.default is dataclasses.MISSING:
            assert row[1] == "required" == twin["default"], field.name
        else:
            shown = ast.literal_eval(code(row[1]))
            assert shown == field.default == ast.literal_eval(twin["default"]), field.name
            assert type(shown) is type(field.default), field.name


def _shape(cell: str, symbols: dict[str, int]) -> tuple[int, ...]:
    """Evaluate a shape cell such as ``$(C', C_{\\text{ctx}})$`` or ``$(2C')$``."""
    inner = re.fullmatch(r"\$\((.*)\)\$", cell)
    assert inner, f"shape cell {cell!r} is not $( ... )$"
    names = [s.strip().replace(r"C_{\text{ctx}}", "C_ctx") for s in inner[1].split(",")]
    return tuple(symbols[name] for name in names)


def _present(cell: str, cfg: NonLocalConfig) -> bool:
    rules = {
        "always": lambda c: True,
        "not for `gaussian`": lambda c: c.instantiation != "gaussian",
        "`concatenation` only": lambda c: c.instantiation == "concatenation",
        '`norm="batch"`': lambda c: c.norm == "batch",
    }
    condition = re.sub(r"\s*\(.*\)$", "", cell)  # drop a parenthesised remark
    assert condition in rules, f"unknown condition {cell!r}: teach this test what it means"
    return rules[condition](cfg)


def _weight_rows() -> list[tuple[str, str, str]]:
    return [(code(r[0]), r[1], r[2]) for r in table(section(PAGE, "Canonical weights"))]


def test_weight_table_lists_the_twin_weights_in_order():
    assert [name for name, _, _ in _weight_rows()] == [w["name"] for w in TWIN["weight"]]
    for (name, shape, _), twin in zip(_weight_rows(), TWIN["weight"]):
        symbols = {"C": 1, "C'": 2, "C_ctx": 3, "2C'": 4}
        expected = tuple(symbols[s] for s in twin["shape"])
        assert _shape(shape, symbols) == expected, name


CONFIGS = [
    NonLocalConfig(6, instantiation=inst, norm=norm, inter_channels=5, context_channels=cc)
    for inst, norm, cc in itertools.product(INSTANTIATIONS, NORMS, (None, 7))
    if not (inst == "gaussian" and cc is not None)
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_weight_table_is_weight_shapes(cfg):
    symbols = {"C": 6, "C'": 5, "C_ctx": cfg.context_channels, "2C'": 10}
    shown = {
        name: _shape(shape, symbols)
        for name, shape, present in _weight_rows()
        if _present(present, cfg)
    }
    assert shown == weight_shapes(cfg)


def test_instantiation_table_lists_every_instantiation_and_marks_the_default():
    rows = table(section(PAGE, "Instantiations"))
    assert [code(row[0]) for row in rows] == list(INSTANTIATIONS)
    defaults = [code(row[0]) for row in rows if "(default)" in row[0]]
    assert defaults == [NonLocalConfig(1).instantiation]
    spec_rows = table(section(SPEC, "2.1 Instantiations"))
    assert [code(row[0]) for row in spec_rows] == list(INSTANTIATIONS)
    # Softmax rows normalise by the sum of f, the others by the (valid) key count.
    for row, spec_row in zip(rows, spec_rows):
        softmax = NonLocalConfig(4, instantiation=code(row[0])).is_softmax
        assert ("\\sum_j m_j f" in row[3]) is softmax and ("valid keys" in row[3]) is not softmax
        assert (spec_row[2] == "sum_j f") is softmax and (spec_row[2] == "N'") is not softmax


def test_subsample_true_windows_are_the_defaults():
    rows = {row[0]: row[1] for row in table(section(PAGE, "Subsampling and pool position"))}
    windows = re.findall(r"\$\(([\d, ]+)\)\$", rows["`True`"])
    parsed = [tuple(int(w) for w in group.split(",")) for group in windows]
    assert parsed == [DEFAULT_WINDOWS[k] for k in (1, 2, 3)]
