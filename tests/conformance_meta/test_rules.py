"""No gaps in the rules: every rule of spec/nonlocal.md has a mutant the suite catches, or
says why no adapter can violate it observably and which tests cover it instead."""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pytest

from nonlocal_conformance.mutants import MUTANTS, RULE_NOTES, RULES, UNLABELLED_RULES
from nonlocal_core.vector_files import load_index
from nonlocal_core.vectors import DEFAULT_DIR

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "spec" / "nonlocal.md"
SUITE_TESTS = ROOT / "conformance" / "nonlocal_conformance" / "tests"
LABEL = re.compile(r"^\*\*\[([A-Z]+-\d+)\]\*\*")
HEADING = re.compile(r"^#{2,} (.*)$")
# A test named in RULES: a path under the repository, then ::, then the function.
TEST_REFERENCE = re.compile(r"((?:tests|conformance)/[\w/]+\.py)::(test_\w+)")


def spec_blocks(text: str) -> list[tuple[str, str | None, str]]:
    """The spec from section 1 on, cut at every heading and every **[ID]** paragraph:
    (section heading, rule id or None, text). A rule's text runs to the next rule or heading.

    Example:
        >>> spec_blocks("## 1. A\\n\\n**[A-1]** x MUST y.\\n\\nmore\\n\\n## 2. B\\n\\nz MUST w.")
        [('1. A', None, ''), ('1. A', 'A-1', '**[A-1]** x MUST y.\\n\\nmore'), ('2. B', None, 'z MUST w.')]
    """  # noqa: E501
    blocks: list[tuple[str, str | None, list[str]]] = []
    for line in text.splitlines():
        heading, label = HEADING.match(line), LABEL.match(line)
        if heading and heading[1][:1].isdigit():
            blocks.append((heading[1], None, []))
        elif label and blocks:
            blocks.append((blocks[-1][0], label[1], [line]))
        elif blocks:
            blocks[-1][2].append(line)
    return [(section, rule, "\n".join(lines).strip()) for section, rule, lines in blocks]


BLOCKS = spec_blocks(SPEC.read_text(encoding="utf-8"))
LABELLED = {rule for _, rule, _ in BLOCKS if rule is not None}


def must_rules() -> dict[str, str]:
    """Each rule with a MUST (or MUST NOT), by id; an unlabelled MUST is named by
    `UNLABELLED_RULES` after its section, or by "?section" when it has no name there."""
    by_section = {section: name for name, section in UNLABELLED_RULES.items()}
    out = {}
    for section, rule, text in BLOCKS:
        if not re.search(r"\bMUST\b", text):
            continue
        out[rule or by_section.get(section, f"?{section}")] = text
    return out


def _mutant_names() -> set[str]:
    return {m.__name__ for m in MUTANTS}


def test_the_spec_parses_into_its_rules():
    assert {"OP-1", "INST-2", "IO-4", "ERR-1", "W-3", "VEC-1"} <= LABELLED
    assert len(LABELLED) > 30
    musts = must_rules()
    assert {"OP-1", "IO-3", "IO-4", "ERR-1", "W-1"} <= set(musts)
    assert not {"INST-3", "OUT-3", "NUM-2", "VEC-1"} & set(musts)  # no MUST in these


def test_every_must_has_an_entry():
    musts = must_rules()
    unnamed = sorted(name for name in musts if name.startswith("?"))
    assert unnamed == [], (
        "a MUST paragraph with no **[ID]** label: name it in mutants.UNLABELLED_RULES"
    )
    assert sorted(set(musts) - set(RULES)) == []


def test_every_rule_of_the_spec_has_an_entry_and_every_entry_is_a_rule():
    assert sorted(LABELLED - set(RULES)) == []
    assert sorted(set(RULES) - LABELLED - set(UNLABELLED_RULES)) == []


def test_each_unlabelled_name_stands_for_an_unlabelled_must_of_its_section():
    musts = must_rules()
    for name, section in UNLABELLED_RULES.items():
        assert name not in LABELLED, f"{name} is a label of the spec now: drop it from the map"
        assert name in musts, f"section {section!r} has no unlabelled MUST for {name} any more"


def test_every_mutant_named_by_a_rule_is_run_and_every_mutant_serves_a_rule():
    named: set[type] = set()
    for rule, covered in RULES.items():
        if isinstance(covered, str):
            assert covered.strip(), rule
            continue
        assert covered and all(isinstance(m, type) for m in covered), rule
        named |= set(covered)
    assert sorted(m.__name__ for m in named - set(MUTANTS)) == []
    assert sorted(m.__name__ for m in set(MUTANTS) - named) == []


def test_notes_belong_to_rules_with_mutants():
    for rule, note in RULE_NOTES.items():
        assert rule in RULES and not isinstance(RULES[rule], str), rule
        assert note.strip(), rule


def _defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


@pytest.mark.parametrize("rule", [r for r in RULES if isinstance(RULES[r], str) or r in RULE_NOTES])
def test_the_tests_an_explanation_names_exist(rule):
    text = RULES[rule] if isinstance(RULES[rule], str) else RULE_NOTES[rule]
    for path, test in TEST_REFERENCE.findall(text):
        assert (ROOT / path).is_file(), f"{rule}: {path} does not exist"
        assert test in _defined_tests(ROOT / path), f"{rule}: {path} has no {test}"
    if isinstance(RULES[rule], str) and rule != "OUT-3":  # OUT-3 requires nothing
        assert TEST_REFERENCE.search(text), f"{rule}: name the tests that cover it"


def test_every_check_a_mutant_names_exists():
    checks = set()
    for path in SUITE_TESTS.glob("test_*.py"):
        checks |= _defined_tests(path)
    named = {c for expected in MUTANTS.values() for c in expected}
    assert sorted(named - checks) == []


def test_a_vector_index_of_another_major_version_is_refused(tmp_path):
    # spec: VEC-1 VER-1 (a loader MUST refuse another MAJOR version)
    directory = tmp_path / "vectors"
    shutil.copytree(DEFAULT_DIR, directory)
    assert load_index(directory)
    index = json.loads((directory / "index.json").read_text())
    for version in ("2.0", "0.9", 1.0, None):
        index["spec_version"] = version
        (directory / "index.json").write_text(json.dumps(index))
        with pytest.raises(ValueError, match="spec_version is"):
            load_index(directory)
