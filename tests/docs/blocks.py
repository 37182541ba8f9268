"""Fenced code blocks of the documentation pages, and a runner that executes one page's.

Run as a script, ``python tests/docs/blocks.py PAGE [--requires MODULE.ATTR]`` executes
every ``python`` block of PAGE in order, in one namespace, with tracebacks pointing at the
page's own line numbers. It exits with `SKIP_EXIT` (and a reason on stderr) only when the
required backend API has not landed yet: the module or attribute is missing, or the
framework itself is not installed. Any other failure, an import error inside a backend
included, is a failure. Only the standard library is used, so the runner adds nothing to the
namespace the blocks see.

A page shows what a statement prints with a ``# -> OUTPUT`` comment at the end of the
statement (its last line, for one spanning several); the runner checks that the statement
printed exactly OUTPUT, where ``...`` stands for any text (doctest's ELLIPSIS), and fails
with `OutputMismatch` otherwise:

    print(cfg.inter_channels, round(cfg.scale, 4))  # -> 8 0.3536

Example:
    >>> page = "Text.\\n\\n```python\\nx = 1\\n```\\n\\n```bash\\necho no\\n```\\n"
    >>> [(b.line, b.language, b.code) for b in parse_blocks(page)]
    [(4, 'python', 'x = 1\\n'), (8, 'bash', 'echo no\\n')]
    >>> expected_outputs(Block(4, "python", "print(1 + 1)  # -> 2\\n"))
    {4: '2'}
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import doctest
import importlib
import io
import re
import sys
import tokenize
from pathlib import Path

SKIP_EXIT = 77

_EXPECTED = re.compile(r"^#\s*->\s?(?P<output>.*?)\s*$")

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


class OutputMismatch(AssertionError):
    """A statement printed something other than the output its page shows."""


def expected_outputs(block: Block) -> dict[int, str]:
    """Page line -> the output a ``# -> OUTPUT`` comment on that line shows."""
    comments = tokenize.generate_tokens(io.StringIO(block.code).readline)
    found = {}
    for token in comments:
        match = _EXPECTED.match(token.string) if token.type == tokenize.COMMENT else None
        if match:
            found[block.line + token.start[0] - 1] = match["output"]
    return found


def statements(block: Block, page: Path) -> list[ast.stmt]:
    """The block's top-level statements, numbered with the page's own line numbers."""
    tree = ast.parse(block.code, filename=str(page))
    ast.increment_lineno(tree, block.line - 1)
    return tree.body


def unchecked_prints(block: Block, page: Path) -> list[int]:
    """Page lines of top-level statements that call print() but show no expected output.

    Example:
        >>> unchecked_prints(Block(1, "python", "print(1)\\nprint(2)  # -> 2\\n"), Path("p"))
        [1]
    """
    shown = expected_outputs(block)
    return [
        statement.lineno
        for statement in statements(block, page)
        if statement.end_lineno not in shown
        and any(
            isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"
            for node in ast.walk(statement)
        )
    ]


def run_page(page: Path) -> tuple[int, int]:
    """Execute the python blocks of `page` in order in one namespace, checking every shown
    output; returns the number of blocks and of outputs checked."""
    namespace: dict = {"__name__": "__main__"}
    blocks = python_blocks(page)
    checked = 0
    checker = doctest.OutputChecker()
    for block in blocks:
        shown = expected_outputs(block)
        body = statements(block, page)
        misplaced = set(shown) - {statement.end_lineno for statement in body}
        if misplaced:
            raise OutputMismatch(
                f"{page}, line {min(misplaced)}: a '# -> output' comment must end a top-level "
                "statement"
            )
        for statement in body:
            code = compile(ast.Module([statement], type_ignores=[]), str(page), "exec")
            if statement.end_lineno not in shown:
                exec(code, namespace)
                continue
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(code, namespace)
            want, got = shown[statement.end_lineno], printed.getvalue()
            sys.stdout.write(got)
            if not checker.check_output(want + "\n", got, doctest.ELLIPSIS):
                raise OutputMismatch(
                    f"{page}, line {statement.end_lineno}: the page shows {want!r}, "
                    f"the code printed {got.rstrip(chr(10))!r}"
                )
            checked += 1
    return len(blocks), checked


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
    count, checked = run_page(args.page)
    print(f"{args.page}: {count} python blocks ran, {checked} shown outputs checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
