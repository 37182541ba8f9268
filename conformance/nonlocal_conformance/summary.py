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
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from .report import OUTCOMES

COLUMNS = ("backend", "passed", "failed", "skipped", "time (s)", "dtype", "device", "profile")
_RUN_KEYS = ("backend", "adapter", "dtype", "device", "hypothesis_profile")
_COUNTS = ("passed", "failed", "skipped")
FORMAT = "nonlocal-conformance-report/1"
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


class ReportError(ValueError):
    """A file is valid JSON but not a conformance report of the shape `render` reads."""


def _brief(value: Any) -> str:
    """`value` as its JSON type and (shortened) text, for error messages."""
    if value is None:
        return "null"
    kind = _JSON_TYPES.get(type(value), "a number")
    text = json.dumps(value)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def check_report(report: Any) -> dict[str, Any]:
    """`report` unchanged if it has the shape of a report (`Report.to_json`), else
    `ReportError` naming the first field that is wrong and what was expected.

    Every field is optional except the fields of each test record, but one that is present
    must have the right type: strings for the run keys, counts >= 0, a finite duration >= 0,
    test records with a nodeid and an outcome among passed, failed and skipped.

    Example:
        >>> check_report({"backend": "numpy", "totals": {"passed": 3}})["backend"]
        'numpy'
        >>> check_report({"totals": []})
        Traceback (most recent call last):
        ...
        nonlocal_conformance.summary.ReportError: 'totals' is an array []: expected an object of counts {"passed": ..., "failed": ..., "skipped": ...}
    """  # noqa: E501
    if not isinstance(report, dict):
        raise ReportError(
            f"the document is {_brief(report)}: expected a JSON object as written by "
            "--conformance-report"
        )
    if report.get("format", FORMAT) != FORMAT:
        raise ReportError(f"'format' is {_brief(report['format'])}: expected {FORMAT!r}")
    for key in _RUN_KEYS:
        value = report.get(key)
        if value is not None and not isinstance(value, str):
            raise ReportError(f"{key!r} is {_brief(value)}: expected a string")
    totals = report.get("totals", {})
    if not isinstance(totals, dict):
        raise ReportError(
            f"'totals' is {_brief(totals)}: expected an object of counts "
            '{"passed": ..., "failed": ..., "skipped": ...}'
        )
    for count in _COUNTS:
        value = totals.get(count, 0)
        if type(value) is not int or value < 0:
            raise ReportError(f"'totals.{count}' is {_brief(value)}: expected an integer >= 0")
    duration = report.get("duration_s", 0.0)
    if type(duration) not in (int, float) or not (math.isfinite(duration) and duration >= 0):
        raise ReportError(
            f"'duration_s' is {_brief(duration)}: expected a finite number of seconds >= 0"
        )
    tests = report.get("tests", [])
    if not isinstance(tests, list):
        raise ReportError(f"'tests' is {_brief(tests)}: expected an array of test records")
    for i, test in enumerate(tests):
        if not isinstance(test, dict):
            raise ReportError(
                f"'tests[{i}]' is {_brief(test)}: expected an object with nodeid, outcome "
                "and detail"
            )
        if test.get("outcome") not in OUTCOMES:
            raise ReportError(
                f"'tests[{i}].outcome' is {_brief(test.get('outcome'))}: expected one of "
                f"{', '.join(OUTCOMES)}"
            )
        if not isinstance(test.get("nodeid"), str):
            raise ReportError(
                f"'tests[{i}].nodeid' is {_brief(test.get('nodeid'))}: expected a string"
            )
        detail = test.get("detail")
        if detail is not None and not isinstance(detail, str):
            raise ReportError(f"'tests[{i}].detail' is {_brief(detail)}: expected a string or null")
    try:  # JSON's \\ud800 escapes decode to lone surrogates, which no output can encode
        json.dumps(report, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        raise ReportError(
            f"holds text that is not valid Unicode ({exc.reason}: {bad!a} from a JSON \\u "
            "escape): expected UTF-8 text"
        ) from None
    return report


def read_report(path: str | Path) -> dict[str, Any]:
    """The report in the JSON file `path`, checked by `check_report`.

    Raises `OSError` when the file cannot be read, and a `ValueError` (`ReportError` or
    `json.JSONDecodeError`) when it is not UTF-8 JSON of a report's shape.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "report.json"
        >>> _ = path.write_text('{"backend": "numpy", "duration_s": "x"}')
        >>> read_report(path)
        Traceback (most recent call last):
        ...
        nonlocal_conformance.summary.ReportError: 'duration_s' is a string "x": expected a finite number of seconds >= 0
    """  # noqa: E501
    text = Path(path).read_text(encoding="utf-8")
    try:
        document = json.loads(text)
    except RecursionError:
        raise ReportError("the JSON is nested too deeply to be a report") from None
    return check_report(document)


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
    """Print the summary of the given JSON reports; 1 if any failed or is unreadable.

    A file that cannot be read, is not JSON or is JSON of another shape is reported on
    stderr as ``unreadable report PATH: what is wrong``; the other reports are still
    summarised.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "a.json").write_text('{"backend": "numpy", "totals": {"passed": 2}}')
        >>> _ = (folder / "b.json").write_text("[1, 2]")
        >>> main([str(folder / "a.json"), str(folder / "b.json")])  # doctest: +NORMALIZE_WHITESPACE
        backend  passed  failed  skipped  time (s)  dtype  device  profile
        numpy         2       0        0       0.0  ?      ?       ?
        1
    """
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
            reports.append(read_report(path))
        except (OSError, ValueError) as exc:  # ReportError and JSONDecodeError are ValueErrors
            broken.append(f"{path}: {exc}")
    print(render(reports))
    for line in broken:
        print(f"unreadable report {line}", file=sys.stderr)
    failed = any(
        r.get("totals", {}).get("failed", 0)
        or any(t["outcome"] == "failed" for t in r.get("tests", []))
        for r in reports
    )
    return 1 if failed or broken else 0


if __name__ == "__main__":
    sys.exit(main())
