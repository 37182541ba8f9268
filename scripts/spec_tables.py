"""Regenerate the generated tables of the spec: the parameter and weight tables of
spec/nonlocal.md from spec/nonlocal.toml, and the rule and mutant tables of
spec/conformance.md (section 7) from `RULES` and `MUTANTS` in nonlocal_conformance.mutants.

python scripts/spec_tables.py          # rewrite the tables in place
python scripts/spec_tables.py --check  # exit 1 if the Markdown is out of date
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "spec"
MARKDOWN = SPEC / "nonlocal.md"
CONFORMANCE = SPEC / "conformance.md"
TWIN = SPEC / "nonlocal.toml"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def parameter_table(twin: dict) -> str:
    rows = ["| parameter | type | default | allowed | default means |", "|---|---|---|---|---|"]
    for p in twin["parameter"]:
        rows.append(
            f"| `{p['name']}` | {_cell(p['type'])} | `{_cell(p['default'])}` | "
            f"{_cell(p['allowed'])} | {_cell(p['resolved'])} |"
        )
    return "\n".join(rows)


def weight_table(twin: dict) -> str:
    rows = ["| weight | shape | present when | initialisation |", "|---|---|---|---|"]
    for w in twin["weight"]:
        when = (
            "; ".join(f"{k} in {', '.join(map(str, v))}" for k, v in w["when"].items()) or "always"
        )
        shape = "(" + ", ".join(w["shape"]) + (",)" if len(w["shape"]) == 1 else ")")
        rows.append(f"| `{w['name']}` | {shape} | {_cell(when)} | {_cell(w['init'])} |")
    return "\n".join(rows)


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def rules_table() -> str:
    """Each rule of spec/nonlocal.md: the mutants that violate it, or why none can."""
    from nonlocal_conformance.mutants import RULE_NOTES, RULES, UNLABELLED_RULES

    rows = [
        "| rule | violated by (each caught by the checks of the next table) | "
        "not observable through the adapter protocol |",
        "|---|---|---|",
    ]
    for rule, covered in RULES.items():
        name = f"`{rule}`"
        if rule in UNLABELLED_RULES:
            name += f" (unlabelled MUST of section {UNLABELLED_RULES[rule]})"
        if isinstance(covered, str):
            mutants, note = "-", covered
        else:
            mutants = ", ".join(f"`{m.__name__}`" for m in covered)
            note = RULE_NOTES.get(rule, "")
        rows.append(f"| {name} | {mutants} | {_cell(_one_line(note))} |")
    return "\n".join(rows)


def mutants_table() -> str:
    """Each mutant: its bug (the class docstring), the dtype it runs at and its checks."""
    from nonlocal_conformance.mutants import MUTANTS

    rows = ["| mutant | bug | caught by (dtype) |", "|---|---|---|"]
    for mutant, checks in MUTANTS.items():
        dtype = getattr(mutant, "dtype_under_test", "float64")
        caught = ", ".join(f"`{c}`" for c in checks)
        rows.append(
            f"| `{mutant.__name__}` | {_cell(_one_line(mutant.__doc__))} | {caught} ({dtype}) |"
        )
    return "\n".join(rows)


def _replace(markdown: str, path: Path, name: str, table: str) -> str:
    pattern = re.compile(
        rf"(<!-- BEGIN GENERATED {name} [^\n]*-->\n).*?(<!-- END GENERATED {name} -->)",
        re.DOTALL,
    )
    markdown, count = pattern.subn(lambda m: f"{m.group(1)}{table}\n{m.group(2)}", markdown)
    if count != 1:
        raise SystemExit(f"{path}: expected one '{name}' generated block, found {count}")
    return markdown


def render(markdown: str, twin: dict) -> str:
    """spec/nonlocal.md with its parameter and weight tables regenerated from `twin`."""
    for name, table in (("parameters", parameter_table(twin)), ("weights", weight_table(twin))):
        markdown = _replace(markdown, MARKDOWN, name, table)
    return markdown


def render_conformance(markdown: str) -> str:
    """spec/conformance.md with its rule and mutant tables regenerated."""
    for name, table in (("rules", rules_table()), ("mutants", mutants_table())):
        markdown = _replace(markdown, CONFORMANCE, name, table)
    return markdown


def main(argv: list[str]) -> int:
    for folder in (ROOT, ROOT / "conformance"):  # importable from a bare checkout too
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    twin = tomllib.loads(TWIN.read_text())
    stale = []
    for path, regenerate in (
        (MARKDOWN, lambda text: render(text, twin)),
        (CONFORMANCE, render_conformance),
    ):
        current = path.read_text()
        fresh = regenerate(current)
        if fresh == current:
            continue
        if "--check" in argv:
            stale.append(path)
        else:
            path.write_text(fresh)
    for path in stale:
        print(f"{path} tables are out of date: run python scripts/spec_tables.py")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
