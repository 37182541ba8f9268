"""``python -m nonlocal_conformance.summary FILE.json...``: one table for several runs.

One row per run (backend, passed, failed, skipped, duration, dtype, device, Hypothesis
profile), then the skip reasons grouped with the backends and counts they apply to, then the
failures. Reports of one run split into shards (``pytest -k`` or test files in several
processes, each with its own ``--conformance-report``) are merged into one row: same
backend, adapter, dtype, device and profile; counts and times add up (the time is
then the sum over shards, not the wall time of shards run side by side). Exits 1 when any
report has a failure (or cannot be read), 0 otherwise.

Example:
    >>> rows = [{"backend": "numpy", "dtype": "float32", "device": "cpu", "duration_s": 2.5,
    ...          "hypothesis_profile": "ci", "totals": {"passed": 3, "failed": 0, "skipped": 1},
    ...          "tests": [{"nodeid": "t::a", "outcome": "skipped", "detail": "no mask"}]}]
    >>> print(render(rows))  # doctest: +NORMALIZE_WHITESPACE
    backend  passed  failed  skipped  time (s)  dtype    device  profile
    numpy         3       0        1       2.5  float32  cpu     ci
    <BLANKLINE>
    skip reasons:
      numpy (1): no mask
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

COLUMNS = ("backend", "passed", "failed", "skipped", "time (s)", "dtype", "device", "profile")
_RUN_KEYS = ("backend", "adapter", "dtype", "device", "hypothesis_profile")
_COUNTS = ("passed", "failed", "skipped")


def merge_shards(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reports of the same run (see `_RUN_KEYS`) merged, in first-seen order.

    A check reported by two shards is kept once per shard, so an overlapping split shows up
    as a count above the suite's size rather than disappearing.

    Example:
        >>> shard = {"backend": "keras-jax", "duration_s": 10.0, "totals": {"passed": 2}}
        >>> merged = merge_shards([shard, dict(shard, totals={"passed": 3, "failed": 1})])
        >>> len(merged), merged[0]["totals"], merged[0]["duration_s"]
        (1, {'passed': 5, 'failed': 1, 'skipped': 0}, 20.0)
    """
    runs: dict[tuple[Any, ...], dict[str, Any]] = {}
    for report in reports:
        key = tuple(report.get(k) for k in _RUN_KEYS)
        run = runs.get(key)
        if run is None:
            runs[key] = run = {
                **report,
                "totals": dict.fromkeys(_COUNTS, 0),
                "duration_s": 0.0,
                "tests": [],
            }
        totals = report.get("totals", {})
        for count in _COUNTS:
            run["totals"][count] += totals.get(count, 0)
        run["duration_s"] += report.get("duration_s", 0.0)
        run["tests"] += report.get("tests", [])
    return list(runs.values())


def _row(report: dict[str, Any]) -> list[str]:
    totals = report.get("totals", {})
    return [
        str(report.get("backend", "?")),
        str(totals.get("passed", 0)),
        str(totals.get("failed", 0)),
        str(totals.get("skipped", 0)),
        f"{report.get('duration_s', 0.0):.1f}",
        str(report.get("dtype", "?")),
        str(report.get("device", "?")),
        str(report.get("hypothesis_profile", "?")),
    ]


def render(reports: list[dict[str, Any]]) -> str:
    """The summary text of parsed reports, shards merged (see the module docstring)."""
    reports = merge_shards(reports)
    rows = [list(COLUMNS)] + [_row(r) for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    numeric = {1, 2, 3, 4}
    lines = []
    for row in rows:
        cells = [
            cell.rjust(w) if i in numeric and row is not rows[0] else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells).rstrip())
    reasons: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    failures = []
    for r in reports:
        for t in r.get("tests", []):
            if t.get("outcome") == "skipped":
                reasons[t.get("detail") or "(no reason given)"][str(r.get("backend"))] += 1
            elif t.get("outcome") == "failed":
                failures.append(f"  {r.get('backend')}: {t.get('nodeid')}: {t.get('detail', '')}")
    if reasons:
        lines += ["", "skip reasons:"]
        for reason, per_backend in sorted(reasons.items()):
            who = ", ".join(f"{b} ({n})" for b, n in sorted(per_backend.items()))
            lines.append(f"  {who}: {reason}")
    if failures:
        lines += ["", "failures:", *failures]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the summary of the given JSON reports; 1 if any failed or is unreadable."""
    parser = argparse.ArgumentParser(
        prog="python -m nonlocal_conformance.summary",
        description="Summarise nonlocal conformance JSON reports.",
    )
    parser.add_argument(
        "reports", nargs="+", type=Path, help="JSON files written by --conformance-report"
    )
    args = parser.parse_args(argv)
    reports, broken = [], []
    for path in args.reports:
        try:
            reports.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            broken.append(f"{path}: {exc}")
    print(render(reports))
    for line in broken:
        print(f"unreadable report {line}", file=sys.stderr)
    failed = any(r.get("totals", {}).get("failed", 0) for r in reports)
    return 1 if failed or broken else 0


if __name__ == "__main__":
    sys.exit(main())
