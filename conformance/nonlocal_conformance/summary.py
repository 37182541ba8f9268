"""``python -m nonlocal_conformance.summary FILE.json...``: one table for several runs.

One row per report (backend, passed, failed, skipped, duration, dtype, device), then the
skip reasons grouped with the backends and counts they apply to, then the failures. Exits 1
when any report has a failure (or cannot be read), 0 otherwise.

Example:
    >>> rows = [{"backend": "numpy", "dtype": "float32", "device": "cpu", "duration_s": 2.5,
    ...          "totals": {"passed": 3, "failed": 0, "skipped": 1},
    ...          "tests": [{"nodeid": "t::a", "outcome": "skipped", "detail": "no mask"}]}]
    >>> print(render(rows))  # doctest: +NORMALIZE_WHITESPACE
    backend  passed  failed  skipped  time (s)  dtype    device
    numpy         3       0        1       2.5  float32  cpu
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

COLUMNS = ("backend", "passed", "failed", "skipped", "time (s)", "dtype", "device")


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
    ]


def render(reports: list[dict[str, Any]]) -> str:
    """The summary text of parsed reports (see the module docstring)."""
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
