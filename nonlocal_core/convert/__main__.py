"""``python -m nonlocal_core.convert IN --from SOURCE [--to TARGET] [OUT]``: find every
non-local block in a checkpoint, print a table of them, and write them out.

Without ``--to``, OUT is a folder that receives one canonical file per block
(``<module path>.safetensors``, written by `nonlocal_core.save`: the config travels in
it). With ``--to TARGET``, OUT is one safetensors file holding every block in TARGET's
names and shapes, under the same module paths, ready for ``load_state_dict(...,
strict=False)`` (``safetensors.torch.load_file``) in that implementation. Without OUT,
only the table is printed. ``--arg NAME=VALUE`` passes SOURCE's own constructor
arguments for what the weights cannot tell (``--arg instantiation=dot_product``,
``--arg pool_size=[1,2,2]``). The input is read without running any code in it.

Example:
    python -m nonlocal_core.convert SLOWFAST_8x8_R50.pkl --from caffe2 --to slowfast out.safetensors
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path
from typing import Any

from ..io import save
from ..profiles import SOURCES
from ..safetensors import write
from .readers import locate_state_dict, read_checkpoint
from .scan import FoundBlock, find_blocks
from .state_dicts import to_state_dict


def main(argv: list[str] | None = None) -> int:
    """Run the tool; returns the exit status (0 done, 1 the checkpoint could not be
    converted, 2 a usage error).

    Example:
        >>> main(["missing.pth", "--from", "mmcv"])  # prints "error: cannot read ..."
        1
    """
    parser = argparse.ArgumentParser(
        prog="python -m nonlocal_core.convert",
        description="Find, list and convert the non-local blocks of a checkpoint.",
    )
    parser.add_argument("input", metavar="IN", help="the checkpoint file")
    parser.add_argument("output", metavar="OUT", nargs="?", help="where to write (see --to)")
    parser.add_argument("--from", dest="source", required=True, choices=SOURCES)
    parser.add_argument(
        "--to",
        dest="target",
        choices=SOURCES,
        help="write one safetensors file in this layout (default: canonical files)",
    )
    parser.add_argument(
        "--arg",
        dest="arguments",
        action="append",
        default=[],
        type=_argument,
        metavar="NAME=VALUE",
        help="a constructor argument of SOURCE, applied to every block (repeatable)",
    )
    args = parser.parse_intermixed_args(argv)
    try:
        where, state = locate_state_dict(read_checkpoint(args.input))
        blocks = find_blocks(state, args.source, **dict(args.arguments))
    except OSError as exc:
        return _error(f"cannot read {args.input!r}: {exc}")
    except (ValueError, TypeError) as exc:
        return _error(str(exc))
    inside = f" (in {where!r})" if where else ""
    print(f"{args.input}{inside}: {len(state)} entries, {len(blocks)} {args.source} block(s)")
    if blocks:
        print(_table(blocks))
    if args.output is None:
        return 0
    if not blocks:
        return _error("nothing to write")
    try:
        written = _write(blocks, args.target, Path(args.output))
    except (OSError, ValueError, TypeError) as exc:
        return _error(f"cannot write {args.output!r}: {exc}")
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def _argument(text: str) -> tuple[str, Any]:
    """NAME=VALUE, VALUE read as a Python literal (numbers, lists, None, dicts) or text."""
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: expected NAME=VALUE")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def _table(blocks: list[FoundBlock]) -> str:
    rows = [("block", "C", "C'", "dims", "instantiation", "scale", "subsample", "norm", "keys")]
    for b in blocks:
        c = b.config
        scale = "-" if c.scale is None else f"{c.scale:.4g}"
        subsample = "-" if c.subsample is None else f"{c.subsample} {c.pool_position}"
        rows.append(
            (
                b.prefix or "(top level)",
                str(c.in_channels),
                str(c.inter_channels),
                str(c.spatial_dims),
                c.instantiation,
                scale,
                subsample,
                c.norm or "-",
                str(len(b.keys)),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _write(blocks: list[FoundBlock], target: str | None, output: Path) -> list[Path]:
    if target is None:
        output.mkdir(parents=True, exist_ok=True)
        paths = []
        for b in blocks:
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", b.prefix) or "block"
            paths.append(output / f"{name}.safetensors")
            save(paths[-1], b.config, b.weights)
        return paths
    separator = "_" if target == "caffe2" else "."
    state: dict[str, Any] = {}
    for b in blocks:
        prefix = b.prefix + separator if b.prefix else ""
        state.update(to_state_dict(b.weights, target, b.config, prefix=prefix))
    configs = {b.prefix: b.config.to_dict() for b in blocks}
    write(output, state, {"format": f"{target} state dict", "nonlocal_blocks": json.dumps(configs)})
    return [output]


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
