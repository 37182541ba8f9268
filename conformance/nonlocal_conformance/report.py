"""The conformance report: what ran, on what, with which outcome (JSON or Markdown).

One record per test (check name, parameters, outcome, duration, skip reason or the first
line of the failure) under a header naming the backend, library versions, device, dtype and
precision settings, declared capabilities and the Hypothesis profile.

Example:
    >>> r = Report(header={"backend": "numpy", "dtype": "float32", "device": "cpu"})
    >>> r.add("pkg/test_x.py::test_a[dot_product]", "passed", 0.5)
    >>> r.add("pkg/test_x.py::test_b", "skipped", 0.0, "backend 'x' does not declare: mask")
    >>> r.totals()
    {'passed': 1, 'failed': 0, 'skipped': 1}
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


@dataclasses.dataclass
class Report:
    """A run's header and records; written with `write`."""

    header: dict[str, Any]
    records: list[Record] = dataclasses.field(default_factory=list)
    duration: float = 0.0

    def add(self, nodeid: str, outcome: str, duration: float, detail: str = "") -> None:
        """Record a test; a later record for the same test (teardown error) replaces it."""
        name = nodeid.rsplit("::", 1)[-1]
        check, _, params = name.partition("[")
        record = Record(nodeid, check, params.rstrip("]"), outcome, round(duration, 4), detail)
        for i, old in enumerate(self.records):
            if old.nodeid == nodeid:
                if outcome == "failed" or old.outcome != "failed":
                    self.records[i] = record
                return
        self.records.append(record)

    def totals(self) -> dict[str, int]:
        """Counts per outcome."""
        return {o: sum(r.outcome == o for r in self.records) for o in OUTCOMES}

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-safe dict (the format `summary` reads)."""
        return {
            "format": "nonlocal-conformance-report/1",
            **self.header,
            "duration_s": round(self.duration, 3),
            "totals": self.totals(),
            "tests": [dataclasses.asdict(r) for r in self.records],
        }

    def to_markdown(self) -> str:
        """The report as Markdown: header, capabilities, then one row per check."""
        h = self.header
        lines = [f"# Non-local block conformance report: {h.get('backend')}", ""]
        for key in ("adapter", "device", "dtype", "hypothesis_profile", "spec_version"):
            if key in h:
                lines.append(f"- {key}: `{h[key]}`")
        for key in ("precision", "versions"):
            if key in h:
                items = ", ".join(f"{k}={v}" for k, v in h[key].items())
                lines.append(f"- {key}: {items}")
        totals = self.totals()
        lines.append(
            f"- result: {totals['passed']} passed, {totals['failed']} failed, "
            f"{totals['skipped']} skipped in {self.duration:.1f} s"
        )
        lines += ["", "## Capabilities", "", "| capability | declared |", "|---|---|"]
        for key, value in h.get("capabilities", {}).items():
            shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            lines.append(f"| {key} | {shown} |")
        lines += ["", "## Checks", "", "| check | parameters | outcome | s | detail |"]
        lines.append("|---|---|---|---|---|")
        for r in self.records:
            detail = r.detail.replace("|", "\\|").replace("\n", " ")[:200]
            lines.append(f"| {r.check} | {r.params} | {r.outcome} | {r.duration:.2f} | {detail} |")
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
