"""Regenerate the parameter and weight tables of spec/nonlocal.md from spec/nonlocal.toml.

python scripts/spec_tables.py          # rewrite the tables in place
python scripts/spec_tables.py --check  # exit 1 if the Markdown is out of date
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

SPEC = Path(__file__).resolve().parents[1] / "spec"
MARKDOWN = SPEC / "nonlocal.md"
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


def render(markdown: str, twin: dict) -> str:
    for name, table in (("parameters", parameter_table(twin)), ("weights", weight_table(twin))):
        pattern = re.compile(
            rf"(<!-- BEGIN GENERATED {name} [^\n]*-->\n).*?(<!-- END GENERATED {name} -->)",
            re.DOTALL,
        )
        markdown, count = pattern.subn(
            lambda m, t=table: f"{m.group(1)}{t}\n{m.group(2)}", markdown
        )
        if count != 1:
            raise SystemExit(f"{MARKDOWN}: expected one '{name}' generated block, found {count}")
    return markdown


def main(argv: list[str]) -> int:
    twin = tomllib.loads(TWIN.read_text())
    current = MARKDOWN.read_text()
    fresh = render(current, twin)
    if "--check" in argv:
        if fresh != current:
            print(f"{MARKDOWN} tables are out of date: run python scripts/spec_tables.py")
            return 1
        return 0
    MARKDOWN.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
