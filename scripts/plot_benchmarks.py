"""Turn benchmark result tables (CSV) into the performance page's plots and Markdown tables.

    python scripts/plot_benchmarks.py           # (re)write docs/assets/perf/*.svg and
                                                # docs/_snippets/perf-*.md from the CSVs
    python scripts/plot_benchmarks.py --check   # exit 1 if any of them is out of date

Each ``docs/assets/perf/NAME.csv`` starts with one ``# `` line naming the machine and
settings, then the columns ``case, pass, formulation, ms, peak_mib, status`` (``status``:
``ok``, ``out of memory`` or ``not measured``). The outputs are ``NAME.svg`` beside it (time
and peak memory per case, log scale, one bar per formulation) and
``docs/_snippets/perf-NAME.md`` (one row per case, one column per formulation, cells
``ms / MiB``), which ``docs/performance.md`` includes.

Each ``docs/assets/perf/NAME.bench.json`` is a document written by
``python -m nonlocal_torch.bench`` (kept as it was, plus a ``machine`` line added by
``--import``); its sweep rows become ``NAME.svg`` (time and memory against N, log-log, ours
solid, naive dashed) and ``docs/_snippets/perf-NAME.md`` (ours against naive per case):

    python scripts/plot_benchmarks.py --import benchmarks/results/bench.json \
        --name cpu-sweep --machine "2-core x86-64 VM, 1 thread, torch 2.13.0+cpu"

Each ``docs/assets/perf/NAME.kerasbench.json`` is a document written by
``python -m nonlocal_keras.bench`` (plus the ``machine`` line; ``--import`` tells the two
kinds apart); it becomes ``NAME.svg`` (extra peak memory and time against N, one column per
Keras backend) and ``docs/_snippets/perf-NAME.md`` (auto against the pairwise matrix).

Each ``docs/assets/perf/NAME.sidebyside.json`` is a document written by
``python -m nonlocal_torch.sidebyside`` (copied as it is); it becomes
``docs/_snippets/perf-NAME.md``: per case and pass, ours against the fastest published
formulation, with the ratios.

Plots are written deterministically (no dates, fixed SVG ids), so ``--check`` can compare
bytes. They share one style, `STYLE` (``with matplotlib.rc_context(STYLE):``), sized for the
documentation page: a figure `FIGURE_WIDTH` inches wide is shown at about its natural size in
the text column at a 1280 px window, so its 12-point text reads like the page's own.

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
import json
import math
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PERF = ROOT / "docs" / "assets" / "perf"
SNIPPETS = ROOT / "docs" / "_snippets"

FIGURE_WIDTH = 8.0  # inches: 768 px, about the docs column at a 1280 px window
STYLE = {
    "font.size": 12,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "legend.fontsize": 11,
    "figure.titlesize": 13,
    # Text stays text (the browser draws it, and it can be searched); fixed ids make the
    # SVG bytes depend on the data alone.
    "svg.fonttype": "none",
    "svg.hashsalt": "nonlocal-block",
}


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

    with matplotlib.rc_context(STYLE):
        return _plot(plt, title, rows)


def _plot(plt, title: str, rows: list[Row]) -> str:
    formulations = _unique(r.formulation for r in rows)
    groups = _unique((r.case, r.direction) for r in rows)
    index = {(r.case, r.direction, r.formulation): r for r in rows}
    width = 0.8 / len(formulations)
    height = 0.95 * len(groups) + 1.2 + 0.3 * math.ceil(len(formulations) / 3)
    fig, axes = plt.subplots(
        1, 2, figsize=(FIGURE_WIDTH, height), sharey=True, layout="constrained"
    )
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
                    axis.text(low, bar.get_y() + width / 2, " OOM", va="center", fontsize=9)
        axis.set_xscale("log")
        axis.set_xlim(low / 2, high * 2)
        axis.set_xlabel(label + ", log scale")
        axis.grid(axis="x", which="major", alpha=0.3)
    axes[0].set_yticks(range(len(groups)), [f"{c}\n{d}" for c, d in groups])
    axes[0].invert_yaxis()
    # Below the panels, where it hides no bar.
    fig.legend(loc="outside lower center", ncol=3, handles=axes[0].get_legend_handles_labels()[0])
    fig.suptitle(textwrap.fill(title, 90))
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return buffer.getvalue()


INSTANTIATIONS = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")


def _num(value: float) -> str:
    """Three significant digits, without exponents: 0.245, 14.2, 4,445."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def bench_table(doc: dict) -> str:
    """Sweep rows of a bench document as Markdown: ours against naive, per case.

    Example:
        >>> row = {"name": "sweep N=16", "instantiation": "dot_product", "backward": False,
        ...        "dtype": "float32", "N": 16, "N_keys": 16, "status": "ok"}
        >>> doc = {"rows": [{**row, "impl": "ours", "time_ms": 1.0, "peak_mib": 2.0},
        ...                 {**row, "impl": "naive", "time_ms": 3.0, "peak_mib": 8.0}]}
        >>> print(bench_table(doc).splitlines()[2])
        | dot_product | fwd | float32 | 16 | 16 | 1 / 2 | 3 / 8 | 3x | 4x |
    """
    keyed: dict[tuple, dict[str, dict]] = {}
    for r in doc["rows"]:
        if r["name"].startswith("sweep"):
            key = (r["instantiation"], r["backward"], r["dtype"], r["N"], r["N_keys"])
            keyed.setdefault(key, {})[r["impl"]] = r

    def cell(r: dict | None) -> str:
        if r is None:
            return "-"
        if r["status"] == "oom":
            return "out of memory"
        if r["status"] != "ok":
            need = re.search(r"needs ~([\d.]+ GiB)", r["status"])
            return f"not run (needs {need[1]})" if need else "not run"
        return f"{_num(r['time_ms'])} / {_num(r['peak_mib'])}"

    def ratio(r: dict | None, ours: dict | None, field: str) -> str:
        if not (r and ours and r["status"] == ours["status"] == "ok" and ours[field] > 0):
            return "-"
        value = r[field] / ours[field]
        return f"{value:.0f}x" if value >= 10 else f"{value:.2g}x"

    lines = [
        "| instantiation | pass | dtype | N | N' | ours ms / MiB | naive ms / MiB "
        "| naive / ours time | naive / ours memory |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = {name: k for k, name in enumerate(INSTANTIATIONS)}
    ranked = sorted(keyed.items(), key=lambda kv: (order.get(kv[0][0], 9), *kv[0][1:]))
    for (inst, bwd, dtype, n, m), impls in ranked:
        ours, naive = impls.get("ours"), impls.get("naive")
        lines.append(
            f"| {inst} | {'fwd+bwd' if bwd else 'fwd'} | {dtype} | {n} | {m} | {cell(ours)} | "
            f"{cell(naive)} | {ratio(naive, ours, 'time_ms')} | "
            f"{ratio(naive, ours, 'peak_mib')} |"
        )
    return "\n".join(lines)


def bench_plot(doc: dict) -> str:
    """Log-log time and peak memory against N for a bench document's sweep, as SVG text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context(STYLE):
        return _bench_plot(plt, doc)


def _bench_plot(plt, doc: dict) -> str:
    from matplotlib.lines import Line2D

    rows = [r for r in doc["rows"] if r["name"].startswith("sweep") and r["status"] == "ok"]
    series: dict[tuple, list[dict]] = {}
    for r in rows:
        series.setdefault((r["instantiation"], r["impl"], r["backward"], r["dtype"]), []).append(r)
    order = INSTANTIATIONS
    dtypes = sorted({r["dtype"] for r in rows}, key=lambda d: (d != "float32", d))
    fig, axes = plt.subplots(1, 2, figsize=(FIGURE_WIDTH, 6.0), layout="constrained")
    ranked = sorted(series.items(), key=lambda kv: (order.index(kv[0][0]), *map(str, kv[0][1:])))
    for (inst, impl, backward, dtype), rs in ranked:
        rs.sort(key=lambda r: r["N"])
        style = {
            "color": f"C{order.index(inst)}",
            "linestyle": "-" if impl == "ours" else "--",
            "marker": "s" if backward else "o",
            "alpha": 1.0 if dtype == dtypes[0] else 0.5,
        }
        ns = [r["N"] for r in rs]
        axes[0].plot(ns, [r["time_ms"] for r in rs], **style)
        axes[1].plot(ns, [max(r["peak_mib"], 1e-3) for r in rs], **style)
    for axis, title in ((axes[0], "time (ms, median)"), (axes[1], "peak memory (MiB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("N = N' (positions)")
        axis.set_title(title)
        axis.grid(True, which="major", alpha=0.3)
    # One entry per colour, line style and marker instead of one per series: 16 series would
    # need a legend as large as the plots.
    present = {key[0] for key in series}
    handles = [
        Line2D([], [], color=f"C{k}", linewidth=3, label=inst)
        for k, inst in enumerate(order)
        if inst in present
    ]
    handles += [
        Line2D([], [], color="black", linestyle="-", label="ours"),
        Line2D([], [], color="black", linestyle="--", label="naive"),
        Line2D([], [], color="black", linestyle="", marker="o", label="forward"),
        Line2D([], [], color="black", linestyle="", marker="s", label="forward+backward"),
    ]
    handles += [
        Line2D([], [], color="black", alpha=0.5, linewidth=3, label=dtype) for dtype in dtypes[1:]
    ]
    return _svg(plt, fig, handles, 4, doc)


def _svg(plt, fig, handles: list, columns: int, doc: dict) -> str:
    """A bench figure finished (legend below, the machine as its title) as SVG text."""
    fig.legend(handles=handles, loc="outside lower center", ncol=columns)
    fig.suptitle(textwrap.fill(doc.get("machine", ""), 90), fontsize=11)
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return buffer.getvalue()


def _document_outputs(json_path: Path, kind: str, plot, table, unit: str) -> dict[Path, str]:
    """A NAME.KIND.json document's plot and snippet: {output path: text}."""
    doc = json.loads(json_path.read_text(encoding="utf-8"))
    name = json_path.name.removesuffix(f".{kind}.json")
    header = (
        f"<!-- generated from docs/assets/perf/{json_path.name} by "
        f"scripts/plot_benchmarks.py -->\n*{doc['machine']}; ms (median) / {unit}*\n\n"
    )
    return {
        json_path.with_name(f"{name}.svg"): plot(doc),
        SNIPPETS / f"perf-{name}.md": header + table(doc) + "\n",
    }


def bench_outputs(json_path: Path) -> dict[Path, str]:
    """What a ``NAME.bench.json`` renders to: {output path: text}."""
    return _document_outputs(json_path, "bench", bench_plot, bench_table, "peak MiB")


KERAS_BACKENDS = ("tensorflow", "jax", "torch")


def keras_bench_table(doc: dict) -> str:
    """A ``nonlocal_keras.bench`` document as Markdown: auto against the pairwise matrix.

    Example:
        >>> row = {"backend": "jax", "instantiation": "dot_product", "backward": False, "N": 16,
        ...        "status": "ok"}
        >>> doc = {"rows": [{**row, "impl": "auto", "strategy": "associative", "time_ms": 1.0,
        ...                  "extra_mib": 2.0}, {**row, "impl": "pairwise", "time_ms": 3.0,
        ...                  "extra_mib": 8.0}]}
        >>> print(keras_bench_table(doc).splitlines()[2])
        | jax | dot_product | fwd | 16 | associative | 1 / 2 | 3 / 8 | 3x | 4x |
    """
    keyed: dict[tuple, dict[str, dict]] = {}
    for r in doc["rows"]:
        keyed.setdefault((r["backend"], r["instantiation"], r["backward"], r["N"]), {})[
            r["impl"]
        ] = r

    def cell(r: dict | None) -> str:
        if r is None or r["status"] != "ok":
            need = re.search(r"needs ~([\d.]+ GiB)", r["status"]) if r else None
            return f"not run (needs {need[1]})" if need else "-"
        return f"{_num(r['time_ms'])} / {_num(r['extra_mib'])}"

    def ratio(r: dict | None, auto: dict | None, field: str) -> str:
        ok = r and auto and r["status"] == auto["status"] == "ok"
        if not ok or auto[field] <= 0.05:  # a 0.0 MiB auto: no meaningful ratio
            return "-"
        value = r[field] / auto[field]
        return f"{value:.0f}x" if value >= 10 else f"{value:.2g}x"

    lines = [
        "| backend | instantiation | pass | N = N' | auto runs | auto ms / MiB "
        "| pairwise ms / MiB | pairwise / auto time | pairwise / auto memory |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rank = {name: k for k, name in enumerate(KERAS_BACKENDS + INSTANTIATIONS)}
    ranked = sorted(keyed.items(), key=lambda kv: (rank[kv[0][0]], rank[kv[0][1]], *kv[0][2:]))
    for (backend, inst, bwd, n), impls in ranked:
        auto, naive = impls.get("auto"), impls.get("pairwise")
        lines.append(
            f"| {backend} | {inst} | {'fwd+bwd' if bwd else 'fwd'} | {n} | "
            f"{(auto or {}).get('strategy', '-')} | {cell(auto)} | {cell(naive)} | "
            f"{ratio(naive, auto, 'time_ms')} | {ratio(naive, auto, 'extra_mib')} |"
        )
    return "\n".join(lines)


def keras_bench_plot(doc: dict) -> str:
    """Extra peak memory and time against N, log-log, one column per Keras backend (SVG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = [r for r in doc["rows"] if r["status"] == "ok"]
    backends = [b for b in KERAS_BACKENDS if any(r["backend"] == b for r in rows)]
    with matplotlib.rc_context(STYLE):
        fig, axes = plt.subplots(
            2,
            len(backends),
            figsize=(FIGURE_WIDTH, 7.5),
            squeeze=False,
            sharey="row",
            layout="constrained",
        )
        ns = sorted({r["N"] for r in rows})
        for col, backend in enumerate(backends):
            series: dict[tuple, list[dict]] = {}
            for r in rows:
                if r["backend"] == backend:
                    series.setdefault((r["instantiation"], r["impl"], r["backward"]), []).append(r)
            for (inst, impl, bwd), rs in sorted(series.items()):
                rs.sort(key=lambda r: r["N"])
                style = {
                    "color": f"C{INSTANTIATIONS.index(inst)}",
                    "linestyle": "-" if impl == "auto" else "--",
                    "marker": "s" if bwd else "o",
                }
                x = [r["N"] for r in rs]
                axes[0][col].plot(x, [max(r["extra_mib"], 0.1) for r in rs], **style)
                axes[1][col].plot(x, [r["time_ms"] for r in rs], **style)
            axes[0][col].plot(ns, [n * n * 4 / 2**20 for n in ns], ":", color="black")
            axes[0][col].set_title(backend)
            for row, label in ((0, "extra peak memory (MiB)"), (1, "time (ms, median)")):
                axis = axes[row][col]
                axis.set_xscale("log")
                axis.set_yscale("log")
                axis.grid(True, which="major", alpha=0.3)
                if col == 0:
                    axis.set_ylabel(label)
            axes[1][col].set_xlabel("N = N'")
        present = {r["instantiation"] for r in rows}
        handles = [
            Line2D([], [], color=f"C{k}", linewidth=3, label=inst)
            for k, inst in enumerate(INSTANTIATIONS)
            if inst in present
        ]
        handles += [
            Line2D([], [], color="black", linestyle="-", label="auto"),
            Line2D([], [], color="black", linestyle="--", label="pairwise"),
            Line2D([], [], color="black", linestyle=":", label="one N x N' float32 matrix"),
            Line2D([], [], color="black", linestyle="", marker="o", label="forward"),
            Line2D([], [], color="black", linestyle="", marker="s", label="forward+backward"),
        ]
        return _svg(plt, fig, handles, 3, doc)


def keras_bench_outputs(json_path: Path) -> dict[Path, str]:
    """What a ``NAME.kerasbench.json`` renders to: {output path: text}."""
    return _document_outputs(
        json_path, "kerasbench", keras_bench_plot, keras_bench_table, "extra peak MiB"
    )


def sidebyside_table(doc: dict) -> str:
    """One line per case and pass of a ``python -m nonlocal_torch.sidebyside`` document: ours,
    the fastest published formulation, and their ratio (<= 1: ours at least at parity).

    Example:
        >>> rows = [
        ...     dict(case="c", instantiation="dot_product", pass_="fwd", candidate="ours",
        ...          status="ok", median_ms=2.0, peak_mib=1.0, ratio=0.5,
        ...          ratio_same_function=0.5),
        ...     dict(case="c", instantiation="dot_product", pass_="fwd",
        ...          candidate="materialising dot product", status="ok", median_ms=4.0,
        ...          peak_mib=9.0, ratio=None, ratio_same_function=None)]
        >>> rows = [{("pass" if k == "pass_" else k): v for k, v in r.items()} for r in rows]
        >>> print(sidebyside_table({"rows": rows}))
        | case | pass | ours: ms / MiB | fastest published: ms / MiB | ours / fastest | ours / same function |
        |---|---|---|---|---|---|
        | c dot_product | fwd | ours: 2 / 1 | materialising dot product: 4 / 9 | 0.5 | 0.5 |
    """  # noqa: E501
    lines = [
        "| case | pass | ours: ms / MiB | fastest published: ms / MiB | ours / fastest "
        "| ours / same function |",
        "|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in doc["rows"]:
        groups.setdefault((row["case"], row["instantiation"], row["pass"]), []).append(row)
    for (case, instantiation, direction), rows in groups.items():
        published = [
            r for r in rows if not r["candidate"].startswith("ours") and r["status"] == "ok"
        ]
        fastest = min(published, key=lambda r: r["median_ms"], default=None)
        if fastest is None:
            skipped = [r["status"] for r in rows if not r["candidate"].startswith("ours")]
            best = skipped[0] if skipped else "none"
        else:
            best = f"{fastest['candidate']}: {_g3(fastest['median_ms'])} / "
            best += _g3(fastest["peak_mib"])
        for ours in (r for r in rows if r["candidate"].startswith("ours")):
            cells = [
                f"{case} {instantiation}",
                direction,
                f"{ours['candidate']}: {_g3(ours['median_ms'])} / {_g3(ours['peak_mib'])}",
                best,
                _g3(ours["ratio"]),
                _g3(ours["ratio_same_function"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _g3(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def sidebyside_outputs(json_path: Path) -> dict[Path, str]:
    """What a ``NAME.sidebyside.json`` renders to: its snippet (no plot)."""
    doc = json.loads(json_path.read_text(encoding="utf-8"))
    name = json_path.name.removesuffix(".sidebyside.json")
    header = (
        f"<!-- generated from docs/assets/perf/{json_path.name} by "
        f"scripts/plot_benchmarks.py -->\n*{'; '.join(doc['header'])}*\n\n"
    )
    return {SNIPPETS / f"perf-{name}.md": header + sidebyside_table(doc) + "\n"}


def import_bench(source: Path, name: str, machine: str) -> Path:
    """Copy a bench document into docs/assets/perf as NAME.bench.json (NAME.kerasbench.json
    for one of ``nonlocal_keras.bench``), adding `machine`."""
    doc = json.loads(source.read_text(encoding="utf-8"))
    doc["machine"] = machine
    kind = "kerasbench" if "keras" in doc else "bench"
    target = PERF / f"{name}.{kind}.json"
    target.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return target


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
    parser.add_argument("--import", dest="source", type=Path, help="a bench.json to add")
    parser.add_argument("--name", help="with --import: the result's name, e.g. cpu-sweep")
    parser.add_argument("--machine", help="with --import: the machine and settings, one line")
    args = parser.parse_args(argv)
    if args.source is not None:
        if not (args.name and args.machine):
            parser.error("--import needs --name and --machine")
        print(f"wrote {import_bench(args.source, args.name, args.machine).relative_to(ROOT)}")
    stale = []
    rendered = {}
    for csv_path in sorted(PERF.glob("*.csv")):
        rendered.update(outputs(csv_path))
    for json_path in sorted(PERF.glob("*.bench.json")):
        rendered.update(bench_outputs(json_path))
    for json_path in sorted(PERF.glob("*.kerasbench.json")):
        rendered.update(keras_bench_outputs(json_path))
    for json_path in sorted(PERF.glob("*.sidebyside.json")):
        rendered.update(sidebyside_outputs(json_path))
    for path, text in rendered.items():
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
