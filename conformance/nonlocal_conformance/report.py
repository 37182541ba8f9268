"""The conformance report: what ran, on what, with which outcome (JSON or Markdown).

One record per test - check name, parameters, outcome, duration, skip reason or the first
line of each failure, drawn examples run and declined (with the reasons), and every failure
with its falsifying case in one line - under a header naming the backend, the adapter and
its options, library versions, device, dtype and precision settings, declared capabilities
and the Hypothesis profile.

Example:
    >>> r = Report(header={"backend": "numpy", "dtype": "float32", "device": "cpu"})
    >>> r.add("pkg/test_x.py::test_a[dot_product]", "passed", 0.5, examples=12,
    ...       declined={"no residual=False": 3})
    >>> r.add("pkg/test_x.py::test_b", "skipped", 0.0, "backend 'x' does not declare: mask")
    >>> r.totals(), r.draws()
    ({'passed': 1, 'failed': 0, 'skipped': 1}, {'examples': 12, 'declined': 3})
    >>> print(r.to_markdown().splitlines()[0])
    # Non-local block conformance report: numpy
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

OUTCOMES = ("passed", "failed", "skipped")


@dataclasses.dataclass
class Record:
    """One test's outcome."""

    nodeid: str
    check: str
    params: str
    outcome: str
    duration: float
    detail: str = ""
    examples: int | None = None  # drawn examples run (None: the check draws none)
    declined: int = 0
    decline_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    failures: list[dict[str, str | None]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Report:
    """A run's header and records; written with `write`."""

    header: dict[str, Any]
    records: list[Record] = dataclasses.field(default_factory=list)
    duration: float = 0.0

    def add(
        self,
        nodeid: str,
        outcome: str,
        duration: float,
        detail: str = "",
        *,
        examples: int | None = None,
        declined: dict[str, int] | None = None,
        failures: list[dict[str, str | None]] | None = None,
    ) -> None:
        """Record a test; a later record for the same test (teardown error) replaces it.

        `declined` maps decline reasons to counts; `failures` holds one ``{"error", "case"}``
        per distinct failure.
        """
        name = nodeid.rsplit("::", 1)[-1]
        check, _, params = name.partition("[")
        reasons = dict(declined or {})
        record = Record(
            nodeid,
            check,
            params.rstrip("]"),
            outcome,
            round(duration, 4),
            detail,
            examples,
            sum(reasons.values()),
            reasons,
            list(failures or []),
        )
        for i, old in enumerate(self.records):
            if old.nodeid == nodeid:
                if old.outcome == "failed" and outcome == "failed":
                    # A teardown error after a failed call: keep both, the call's first.
                    old.failures += record.failures
                    old.detail = "; ".join(d for d in (old.detail, detail) if d)
                elif outcome == "failed" or old.outcome != "failed":
                    self.records[i] = record
                return
        self.records.append(record)

    def totals(self) -> dict[str, int]:
        """Counts per outcome."""
        return {o: sum(r.outcome == o for r in self.records) for o in OUTCOMES}

    def draws(self) -> dict[str, int]:
        """Drawn examples run and declined, over every check."""
        return {
            "examples": sum(r.examples or 0 for r in self.records),
            "declined": sum(r.declined for r in self.records),
        }

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-safe dict (the format `summary` reads)."""
        return {
            "format": "nonlocal-conformance-report/1",
            **self.header,
            "duration_s": round(self.duration, 3),
            "totals": self.totals(),
            "draws": self.draws(),
            "tests": [dataclasses.asdict(r) for r in self.records],
        }

    def to_markdown(self) -> str:
        """The report as Markdown, to publish: header, capabilities, one row per check
        (outcome, examples run and declined), then the decline reasons and every failure
        with its falsifying case."""
        h = self.header
        lines = [f"# Non-local block conformance report: {h.get('backend')}", ""]
        keys = ("adapter_name", "adapter", "device", "dtype", "hypothesis_profile")
        for key in (*keys, "suite_version", "spec_version"):
            if key in h:
                lines.append(f"- {key}: `{h[key]}`")
        for key in ("options", "precision", "versions"):
            if h.get(key):
                items = ", ".join(f"{k}={v}" for k, v in h[key].items())
                lines.append(f"- {key}: {items}")
        totals, draws = self.totals(), self.draws()
        lines.append(
            f"- result: {totals['passed']} passed, {totals['failed']} failed, "
            f"{totals['skipped']} skipped in {self.duration:.1f} s; {draws['examples']} drawn "
            f"examples run, {draws['declined']} declined"
        )
        lines += ["", "## Capabilities", "", "| capability | declared |", "|---|---|"]
        for key, value in h.get("capabilities", {}).items():
            lines.append(f"| {key} | {_cell(_shown(value))} |")
        lines += [
            "",
            "## Checks",
            "",
            "| check | parameters | outcome | examples | declined | s | detail |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.records:
            examples = "" if r.examples is None else str(r.examples)
            lines.append(
                f"| {r.check} | {r.params} | {r.outcome} | {examples} | {r.declined} | "
                f"{r.duration:.2f} | {_cell(r.detail)[:200]} |"
            )
        declined = [r for r in self.records if r.decline_reasons]
        if declined:
            lines += ["", "## Declined draws", "", "| check | reason | draws |", "|---|---|---|"]
            for r in declined:
                name = f"{r.check}[{r.params}]" if r.params else r.check
                for reason, count in sorted(r.decline_reasons.items(), key=lambda i: -i[1]):
                    lines.append(f"| {name} | {_cell(reason)} | {count} |")
        failed = [r for r in self.records if r.outcome == "failed"]
        if failed:
            lines += ["", "## Failures"]
            for r in failed:
                lines += ["", f"### {r.check}[{r.params}]" if r.params else f"### {r.check}", ""]
                for failure in r.failures or [{"error": r.detail, "case": None}]:
                    lines.append(f"- {failure.get('error')}")
                    if failure.get("case"):
                        lines.append(f"  - case: `{failure['case']}`")
        return "\n".join(lines) + "\n"

    def write(self, path: str | Path) -> None:
        """Write Markdown for ``.md`` paths, JSON otherwise; atomically (a temporary file
        beside `path`, then a rename), so a reader never sees half a report."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() in (".md", ".markdown"):
            text = self.to_markdown()
        else:
            text = json.dumps(self.to_json(), indent=1) + "\n"
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(text)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_shown(v)}" for k, v in value.items())
    return str(value)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")
