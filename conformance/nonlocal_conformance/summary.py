"""``python -m nonlocal_conformance.summary FILE.json...``: one table for several runs.

One row per run (the run: backend, with the adapter's name when it differs and its
options such as a forced strategy; passed, failed, skipped; drawn examples run and declined;
duration, dtype, device, Hypothesis profile), then the skip reasons grouped with the runs
and counts they apply to, then the failures. Reports of one run split into shards
(``pytest -k`` or test files in several processes, each with its own
``--conformance-report``) are merged into one row: same backend, adapter, adapter name,
options, library versions, dtype, device and profile, and no test in common; counts and
times add up (the time is then the sum over shards, not the wall time of shards run side
by side). Reports
that share a test are different runs (a rerun) and keep their own rows. Exits 1 when any
report has a failure (or cannot be read), 0 otherwise.

Example:
    >>> rows = [{"backend": "numpy", "dtype": "float32", "device": "cpu", "duration_s": 2.5,
    ...          "hypothesis_profile": "ci", "totals": {"passed": 3, "failed": 0, "skipped": 1},
    ...          "tests": [{"nodeid": "t::a", "outcome": "skipped", "detail": "no mask"},
    ...                    {"nodeid": "t::b", "outcome": "passed", "examples": 12,
    ...                     "declined": 2}]}]
    >>> print(render(rows))  # doctest: +NORMALIZE_WHITESPACE
    run    passed  failed  skipped  examples  declined  time (s)  dtype    device  profile
    numpy       3       0        1        12         2       2.5  float32  cpu     ci
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

COLUMNS = (
    "run",
    "passed",
    "failed",
    "skipped",
    "examples",
    "declined",
    "time (s)",
    "dtype",
    "device",
    "profile",
)
_RUN_KEYS = ("backend", "adapter", "adapter_name", "dtype", "device", "hypothesis_profile")
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
    options = report.get("options", {})
    if not isinstance(options, dict) or not all(isinstance(v, str) for v in options.values()):
        raise ReportError(f"'options' is {_brief(options)}: expected an object of strings")
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
        for count in ("examples", "declined"):
            value = test.get(count)
            if value is not None and (type(value) is not int or value < 0):
                raise ReportError(
                    f"'tests[{i}].{count}' is {_brief(value)}: expected an integer >= 0 or null"
                )
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


def run_key(report: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies a run: `_RUN_KEYS`, the adapter's options, the library versions and
    the suite and spec versions.

    Example:
        >>> run_key({"backend": "torch", "options": {"strategy": "chunked"}})[-3]
        (('strategy', 'chunked'),)
    """
    options = tuple(sorted((report.get("options") or {}).items()))
    versions = report.get("versions")
    versions = tuple(sorted(versions.items())) if isinstance(versions, dict) else None
    suite = (report.get("suite_version"), report.get("spec_version"))
    return (*(report.get(k) for k in _RUN_KEYS), options, versions, suite)


def run_label(report: dict[str, Any]) -> str:
    """The run's name in the table: backend, adapter name when it differs, options.

    Example:
        >>> run_label({"backend": "pkg.mod:A", "adapter_name": "mine",
        ...            "options": {"strategy": "sdpa"}})
        'pkg.mod:A (mine) strategy=sdpa'
    """
    label = str(report.get("backend", "?"))
    name = report.get("adapter_name")
    if name and name != label:
        label += f" ({name})"
    for key, value in sorted((report.get("options") or {}).items()):
        label += f" {key}={value}"
    return label


def merge_shards(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Shards of one run merged, in first-seen order: reports with the same `run_key` and
    no test in common. A report sharing a test with a run is another run (a rerun, or the
    same backend with other settings), never merged into it.

    Example:
        >>> shard = {"backend": "keras-jax", "duration_s": 10.0, "totals": {"passed": 2}}
        >>> merged = merge_shards([shard, dict(shard, totals={"passed": 3, "failed": 1})])
        >>> len(merged), merged[0]["totals"], merged[0]["duration_s"]
        (1, {'passed': 5, 'failed': 1, 'skipped': 0}, 20.0)
        >>> rerun = {"backend": "torch", "tests": [{"nodeid": "t::a", "outcome": "passed"}]}
        >>> len(merge_shards([rerun, rerun]))
        2
    """
    runs: list[tuple[tuple[Any, ...], set[str], dict[str, Any]]] = []
    for report in reports:
        key = run_key(report)
        ids = {t.get("nodeid") for t in report.get("tests", [])}
        run = next((r for k, seen, r in runs if k == key and not seen & ids), None)
        if run is None:
            run = {
                **report,
                "totals": dict.fromkeys(_COUNTS, 0),
                "duration_s": 0.0,
                "tests": [],
            }
            runs.append((key, set(), run))
        next(seen for _, seen, r in runs if r is run).update(ids)
        totals = report.get("totals", {})
        for count in _COUNTS:
            run["totals"][count] += totals.get(count, 0)
        run["duration_s"] += report.get("duration_s", 0.0)
        run["tests"] += report.get("tests", [])
    return [run for _, _, run in runs]


def _row(report: dict[str, Any]) -> list[str]:
    totals = report.get("totals", {})
    tests = report.get("tests", [])
    return [
        run_label(report),
        str(totals.get("passed", 0)),
        str(totals.get("failed", 0)),
        str(totals.get("skipped", 0)),
        str(sum(t.get("examples") or 0 for t in tests)),
        str(sum(t.get("declined") or 0 for t in tests)),
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
    numeric = {1, 2, 3, 4, 5, 6}
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
                reasons[t.get("detail") or "(no reason given)"][run_label(r)] += 1
            elif t.get("outcome") == "failed":
                failures.append(f"  {run_label(r)}: {t.get('nodeid')}: {t.get('detail', '')}")
                for failure in t.get("failures") or []:
                    if isinstance(failure, dict) and failure.get("case"):
                        failures.append(f"    case: {failure['case']}")
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
        run    passed  failed  skipped  examples  declined  time (s)  dtype  device  profile
        numpy       2       0        0         0         0       0.0  ?      ?       ?
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
