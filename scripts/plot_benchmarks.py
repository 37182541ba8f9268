"""Turn benchmark result tables (CSV) into the performance page's plots and Markdown tables.

    python scripts/plot_benchmarks.py           # (re)write docs/assets/perf/*.svg and
                                                # docs/_snippets/perf-*.md from the CSVs
    python scripts/plot_benchmarks.py --check   # exit 1 if any of them is out of date

Each ``docs/assets/perf/NAME.csv`` starts with one ``# `` line naming the machine and
settings, then the columns ``case, pass, formulation, ms, peak_mib, status`` (``status``:
``ok``, ``out of memory`` or ``not measured``). The outputs are ``NAME.svg`` beside it (time
and peak memory per case, log scale, one bar per formulation) and
``docs/_snippets/perf-NAME.md`` (one row per case, one column per formulation, cells
``ms / MiB``), which ``docs/performance.md`` includes. Plots are written deterministically
(no dates, fixed SVG ids), so ``--check`` can compare bytes.

Example:
    >>> rows = [Row("a", "forward", "f", 1.5, 10.0, "ok"), Row("a", "forward", "g", None, None,
    ...         "out of memory")]
    >>> print(markdown_table(rows))
    | case | f | g |
    |---|---|---|
    | a, forward | 1.5 / 10 | out of memory |
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PERF = ROOT / "docs" / "assets" / "perf"
SNIPPETS = ROOT / "docs" / "_snippets"


@dataclasses.dataclass(frozen=True)
class Row:
    """One measurement: a case, forward or forward+backward, a formulation, its results."""

    case: str
    direction: str
    formulation: str
    ms: float | None
    peak_mib: float | None
    status: str


def _number(text: str) -> float | None:
    return float(text) if text else None


def read(path: Path) -> tuple[str, list[Row]]:
    """The title line and rows of a result CSV (see the module docstring)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].startswith("# "):
        raise ValueError(f"{path}: the first line must be '# <machine and settings>'")
    rows = []
    for record in csv.DictReader(lines[1:]):
        if record["status"] not in ("ok", "out of memory", "not measured"):
            raise ValueError(f"{path}: status {record['status']!r} is not a known status")
        rows.append(
            Row(
                record["case"],
                record["pass"],
                record["formulation"],
                _number(record["ms"]),
                _number(record["peak_mib"]),
                record["status"],
            )
        )
    return lines[0][2:], rows


def _unique(values) -> list:
    return list(dict.fromkeys(values))


def _cell(row: Row | None) -> str:
    if row is None or row.status == "not measured":
        return "-"
    if row.status != "ok":
        return row.status
    return f"{row.ms:g} / {row.peak_mib:g}"


def markdown_table(rows: list[Row]) -> str:
    """Rows as a Markdown table: one line per (case, pass), one column per formulation."""
    formulations = _unique(r.formulation for r in rows)
    index = {(r.case, r.direction, r.formulation): r for r in rows}
    lines = ["| case | " + " | ".join(formulations) + " |"]
    lines.append("|---" * (len(formulations) + 1) + "|")
    for case, direction in _unique((r.case, r.direction) for r in rows):
        cells = [_cell(index.get((case, direction, f))) for f in formulations]
        lines.append(f"| {case}, {direction} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(title: str, rows: list[Row]) -> str:
    """Two log-scale bar panels (time, peak memory) as SVG text; failed runs are marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams.update({"svg.hashsalt": "nonlocal-block", "svg.fonttype": "none"})
    formulations = _unique(r.formulation for r in rows)
    groups = _unique((r.case, r.direction) for r in rows)
    index = {(r.case, r.direction, r.formulation): r for r in rows}
    width = 0.8 / len(formulations)
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.9 * len(groups) + 2.2), sharey=True)
    for axis, key, label in ((axes[0], "ms", "time (ms)"), (axes[1], "peak_mib", "peak (MiB)")):
        values = [v for r in rows if (v := getattr(r, key)) is not None]
        low, high = min(values), max(values)
        for k, formulation in enumerate(formulations):
            ys = [g + (k - (len(formulations) - 1) / 2) * width for g in range(len(groups))]
            widths = []
            for case, direction in groups:
                row = index.get((case, direction, formulation))
                value = None if row is None else getattr(row, key)
                widths.append(value if value is not None else 0.0)
            bars = axis.barh(ys, widths, height=width, label=formulation, color=f"C{k}")
            for bar, (case, direction) in zip(bars, groups):
                row = index.get((case, direction, formulation))
                if row is not None and row.status == "out of memory":
                    axis.text(low, bar.get_y() + width / 2, " OOM", va="center", fontsize=7)
        axis.set_xscale("log")
        axis.set_xlim(low / 2, high * 2)
        axis.set_xlabel(label + ", log scale")
        axis.grid(axis="x", which="major", alpha=0.3)
    axes[0].set_yticks(range(len(groups)), [f"{c}\n{d}" for c, d in groups], fontsize=8)
    axes[0].invert_yaxis()
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return buffer.getvalue()


def outputs(csv_path: Path) -> dict[Path, str]:
    """What `csv_path` renders to: {output path: text}."""
    title, rows = read(csv_path)
    name = csv_path.stem
    header = (
        f"<!-- generated from docs/assets/perf/{name}.csv by scripts/plot_benchmarks.py -->\n"
        f"*{title}*\n\n"
    )
    return {
        csv_path.with_suffix(".svg"): plot(title, rows),
        SNIPPETS / f"perf-{name}.md": header + markdown_table(rows) + "\n",
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if an output is stale")
    args = parser.parse_args(argv)
    stale = []
    for csv_path in sorted(PERF.glob("*.csv")):
        for path, text in outputs(csv_path).items():
            current = path.read_text(encoding="utf-8") if path.is_file() else None
            if current == text:
                continue
            if args.check:
                stale.append(path.relative_to(ROOT).as_posix())
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
                print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("stale (run python scripts/plot_benchmarks.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
