"""Fenced code blocks of the documentation pages, and a runner that executes one page's.

Run as a script, ``python tests/docs/blocks.py PAGE [--requires MODULE.ATTR]`` executes
every ``python`` block of PAGE in order, in one namespace, with tracebacks pointing at the
page's own line numbers. It exits with `SKIP_EXIT` (and a reason on stderr) only when the
required backend API has not landed yet: the module or attribute is missing, or the
framework itself is not installed. Any other failure, an import error inside a backend
included, is a failure. Only the standard library is used, so the runner adds nothing to the
namespace the blocks see.

Example:
    >>> page = "Text.\\n\\n```python\\nx = 1\\n```\\n\\n```bash\\necho no\\n```\\n"
    >>> [(b.line, b.language, b.code) for b in parse_blocks(page)]
    [(4, 'python', 'x = 1\\n'), (8, 'bash', 'echo no\\n')]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
from pathlib import Path

SKIP_EXIT = 77

_FENCE_OPEN = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)[^`]*$")


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced code block: its language, its code, and the page line its code starts on."""

    line: int
    language: str
    code: str


def parse_blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown text, in order (nested fences stay inside their block).

    Example:
        >>> parse_blocks("````md\\n```python\\nx\\n```\\n````\\n")[0].language
        'md'
    """
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE_OPEN.match(lines[index])
        if not opening:
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        body: list[str] = []
        index += 1
        start = index + 1  # 1-based line number of the first code line
        while index < len(lines):
            line = lines[index]
            stripped = line.strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                break
            body.append(line[indent:] if line[:indent].strip() == "" else line)
            index += 1
        blocks.append(Block(start, opening["info"].lower(), "".join(f"{b}\n" for b in body)))
        index += 1
    return blocks


def python_blocks(page: Path) -> list[Block]:
    """The blocks of `page` fenced as ``python`` (``pycon``, ``text``, ``bash`` are not run)."""
    return [b for b in parse_blocks(page.read_text(encoding="utf-8")) if b.language == "python"]


def missing_requirement(requirement: str) -> str | None:
    """Why `requirement` (``module.attr``) cannot be used yet, or None when it can.

    Only "not landed" counts: the module or attribute does not exist, or a framework the
    module imports is not installed. Other import errors propagate: they are bugs.

    Example:
        >>> missing_requirement("json.dumps") is None
        True
        >>> missing_requirement("json.no_such_thing")
        "json has no attribute 'no_such_thing' (not landed yet)"
    """
    module_name, _, attribute = requirement.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        # A missing submodule of the package itself is a bug, not a backend still to come.
        inside = (error.name or "").startswith(module_name.split(".")[0] + ".")
        if inside:
            raise
        return f"{module_name} is not importable: {error}"
    if not hasattr(module, attribute):
        return f"{module_name} has no attribute {attribute!r} (not landed yet)"
    return None


def run_page(page: Path) -> int:
    """Execute the python blocks of `page` in order in one namespace; returns the count."""
    namespace: dict = {"__name__": "__main__"}
    blocks = python_blocks(page)
    for block in blocks:
        # Pad with newlines so a traceback's line numbers are the page's own.
        source = "\n" * (block.line - 1) + block.code
        exec(compile(source, str(page), "exec"), namespace)
    return len(blocks)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("--requires", help="MODULE.ATTR the page needs, e.g. nonlocal_torch.X")
    args = parser.parse_args(argv)
    if args.requires:
        reason = missing_requirement(args.requires)
        if reason is not None:
            print(f"SKIP: {reason}", file=sys.stderr)
            return SKIP_EXIT
    count = run_page(args.page)
    print(f"{args.page}: {count} python blocks ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
