"""How the published implementations conform: the conformance suite on mmcv and PyTorchVideo,
rendered as the table of docs/published.md.

    python scripts/published_conformance.py                 # run the suite, rewrite the table
    python scripts/published_conformance.py REPORT.json...  # rewrite it from JSON reports
    python scripts/published_conformance.py --check [REPORT.json...]

Without reports it runs the suite (``pytest conformance --backend=NAME``, Hypothesis profile
``ci``: the same examples on every run and machine) once per implementation in `RUNS`, with
the JSON reports in ``build/published/``. ``--check`` writes nothing and exits 1 when the
rendered table differs from the one in docs/published.md (it prints the difference and the
command that regenerates it) or when a failed check has no explanation in `EXPLANATIONS`: a
known upstream defect stays green only while it is documented, and a fixed one, or a new
failure, turns the check red until the page says so.

Example:
    >>> report = {"backend": "mmcv", "adapter_name": "mmcv", "dtype": "float32",
    ...           "versions": {"mmcv": "2.2.0", "torch": "2.13.0"}, "hypothesis_profile": "ci",
    ...           "device": "cpu", "tests": [
    ...     {"check": "test_a", "params": "", "outcome": "passed", "examples": 12,
    ...      "declined": 1, "decline_reasons": {"mmcv cannot express this config": 1}},
    ...     {"check": "test_gradients_match_reference", "params": "concatenation",
    ...      "outcome": "failed", "examples": 0, "declined": 0, "decline_reasons": {},
    ...      "failures": [{"error": "RuntimeError: modified by an inplace operation"}]}]}
    >>> print(render([report]).splitlines()[4])
    | mmcv | 2.2.0 | torch 2.13.0 | float32 | 1 | 0 | 0 | 1 | 12 | 1 |
    >>> unexplained([report])
    []
"""

from __future__ import annotations

import argparse
import collections
import difflib
import json
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "published.md"
REPORTS = ROOT / "build" / "published"
COMMAND = "python scripts/published_conformance.py"
BEGIN = f"<!-- BEGIN GENERATED conformance ({COMMAND}) -->"
END = "<!-- END GENERATED conformance -->"
PROFILE = "ci"

# Backend name -> the module whose version the table shows.
IMPLEMENTATIONS = {"mmcv": "mmcv", "pytorchvideo": "pytorchvideo"}
# The runs the table shows: (backend, dtype).
RUNS = (("mmcv", "float32"), ("pytorchvideo", "float32"))

_MMCV_SOURCE = "mmcv/cnn/bricks/non_local.py"
# Why a check fails, keyed by (backend, check id): a defect of the implementation, with the
# upstream line it comes from. Every failure of a run must have one (--check).
EXPLANATIONS: dict[tuple[str, str], str] = {
    ("mmcv", "test_gradients_match_reference[concatenation]"): (
        "mmcv's concatenation cannot be trained: backward raises `RuntimeError: one of the "
        "variables needed for gradient computation has been modified by an inplace "
        "operation`. `concat_project` is a `ConvModule` with `act_cfg=dict(type='ReLU')`, "
        "whose ReLU is in place (`inplace=True`, mmcv/cnn/bricks/conv_module.py line 138) and "
        "saves its output for backward; `_NonLocalNd.concatenation` then divides that very "
        "output in place, `pairwise_weight /= pairwise_weight.shape[-1]` "
        f"({_MMCV_SOURCE} line 161). The forward values are right (inference and training "
        "mode pass); an out-of-place division (`pairwise_weight = pairwise_weight / ...`) "
        "would fix the gradient. The other modes' in-place divisions (lines 134 and 144) act "
        "on a matmul output autograd does not keep, so their gradients are right."
    ),
}


def check_id(test: dict[str, Any]) -> str:
    """``check[params]`` of a report record, the key of `EXPLANATIONS`.

    Example:
        >>> check_id({"check": "test_x", "params": "concatenation"}), check_id({"check": "t"})
        ('test_x[concatenation]', 't')
    """
    params = test.get("params") or ""
    return f"{test['check']}[{params}]" if params else test["check"]


def load(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The JSON reports at `paths`, in the order of `RUNS` (others after, by name)."""
    reports = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"{path}: not a readable JSON conformance report: {exc}") from None
        if not isinstance(data, dict) or "tests" not in data or "backend" not in data:
            raise SystemExit(f"{path}: not a conformance report (no 'backend' and 'tests')")
        reports.append(data)
    return sorted(reports, key=_order)


def _order(report: dict[str, Any]) -> tuple:
    key = (report["backend"], report.get("dtype"))
    return (RUNS.index(key) if key in RUNS else len(RUNS), *map(str, key))


def _name(report: dict[str, Any]) -> str:
    return str(report.get("adapter_name") or report["backend"])


def _version(report: dict[str, Any]) -> tuple[str, str]:
    versions = report.get("versions", {})
    package = IMPLEMENTATIONS.get(report["backend"], report["backend"])
    # The release only: a CUDA build (2.13.0+cu128) runs the same module as the CPU one.
    framework = f"torch {versions['torch'].split('+')[0]}" if "torch" in versions else ""
    return str(versions.get(package, "?")), framework


def _counts(report: dict[str, Any]) -> dict[str, int]:
    tests = report["tests"]
    skipped = [t for t in tests if t["outcome"] == "skipped"]
    return {
        "passed": sum(t["outcome"] == "passed" for t in tests),
        "skipped": len(skipped),
        "all_declined": sum(bool(t.get("declined")) and not t.get("examples") for t in skipped),
        "failed": sum(t["outcome"] == "failed" for t in tests),
        "examples": sum(t.get("examples") or 0 for t in tests),
        "declined": sum(t.get("declined") or 0 for t in tests),
    }


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def failures(reports: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """{(backend, check id): [the reports it failed in]}, in report order."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for report in reports:
        for test in report["tests"]:
            if test["outcome"] == "failed":
                out.setdefault((report["backend"], check_id(test)), []).append(report)
    return out


def unexplained(reports: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """The failed (backend, check id) pairs `EXPLANATIONS` has nothing for."""
    return [key for key in failures(reports) if key not in EXPLANATIONS]


def render(reports: Sequence[dict[str, Any]]) -> str:
    """The generated part of docs/published.md: the results table, the declined draws by
    reason, and every failure with its explanation."""
    lines = [
        "| implementation | version | with | dtype | checks passed | checks skipped "
        "| of which declined | checks failed | examples run | examples declined |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for report in reports:
        c = _counts(report)
        version, framework = _version(report)
        lines.append(
            f"| {_name(report)} | {version} | {framework} | {report.get('dtype')} "
            f"| {c['passed']} | {c['skipped']} | {c['all_declined']} | {c['failed']} "
            f"| {c['examples']} | {c['declined']} |"
        )
    runs = sorted({(r.get("hypothesis_profile", "?"), r.get("device", "?")) for r in reports})
    shown = ", ".join(f"Hypothesis profile `{p}` on {d}" for p, d in runs)
    lines = [f"Suite runs: {shown or 'none'}.", "", *lines]

    lines += ["", "Examples declined, by the adapter's reason:", ""]
    declined = False
    for report in reports:
        reasons: collections.Counter = collections.Counter()
        for test in report["tests"]:
            reasons.update(test.get("decline_reasons") or {})
        for reason, count in sorted(reasons.items(), key=lambda item: (-item[1], item[0])):
            declined = True
            lines.append(f"- {_name(report)} ({report.get('dtype')}): {_cell(reason)}: {count}")
    if not declined:
        lines.append("- none")

    lines += ["", "Failed checks:", ""]
    found = failures(reports)
    for (backend, check), failed_in in found.items():
        dtypes = ", ".join(sorted({str(r.get("dtype")) for r in failed_in}))
        explanation = EXPLANATIONS.get(
            (backend, check),
            f"**not explained yet**: add it to `EXPLANATIONS` in {COMMAND.split()[-1]}",
        )
        error = _error_type(failed_in[0], check)
        lines.append(
            f"- **{_name(failed_in[0])}**, `{check}` ({dtypes}{error}): {_cell(explanation)}"
        )
    if not found:
        lines.append("- none")
    return "\n".join(lines) + "\n"


def _error_type(report: dict[str, Any], check: str) -> str:
    """``, RuntimeError`` - the exception type of the check's first failure, if recorded."""
    for test in report["tests"]:
        if check_id(test) == check and test["outcome"] == "failed":
            recorded = test.get("failures") or [{"error": test.get("detail", "")}]
            head = str(recorded[0].get("error") or "").split(":", 1)[0].strip()
            if head.isidentifier():
                return f", {head.rsplit('.', 1)[-1]}"
    return ""


def replace_block(page: str, block: str) -> str:
    """`page` with the text between the BEGIN and END markers replaced by `block`."""
    start, end = page.find(BEGIN), page.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{DOCS}: the markers {BEGIN!r} and {END!r} are missing")
    return page[: start + len(BEGIN)] + "\n" + block + page[end:]


def current_block(page: str) -> str:
    """The text between the markers of `page`."""
    start, end = page.find(BEGIN), page.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{DOCS}: the markers {BEGIN!r} and {END!r} are missing")
    return page[start + len(BEGIN) : end].removeprefix("\n")


def run_suite(backend: str, dtype: str, folder: Path) -> Path:
    """One run of the suite (its own process), its JSON report in `folder`. Exit status 1
    (some check failed) is a result the table records; anything else stops here."""
    report = folder / f"{backend}-{dtype}.json"
    report.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "conformance",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--backend={backend}",
        f"--dtype={dtype}",
        f"--hypothesis-profile={PROFILE}",
        f"--conformance-report={report}",
    ]
    print(f"== {' '.join(command[2:])}", flush=True)
    code = subprocess.run(command, cwd=ROOT, check=False).returncode
    if code not in (0, 1) or not report.is_file():
        raise SystemExit(f"the suite on {backend} ({dtype}) stopped with exit status {code}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "reports",
        nargs="*",
        help="JSON conformance reports (default: run the suite, reports in build/published)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if docs/published.md differs or a failure is unexplained",
    )
    parser.add_argument("--docs", type=Path, default=DOCS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    paths = list(args.reports)
    if not paths:
        REPORTS.mkdir(parents=True, exist_ok=True)
        paths = [run_suite(backend, dtype, REPORTS) for backend, dtype in RUNS]
    reports = load(paths)
    block = render(reports)
    page = args.docs.read_text(encoding="utf-8")
    regenerate = COMMAND + ("" if not args.reports else " " + " ".join(map(str, args.reports)))
    status = 0
    missing = unexplained(reports)
    if missing:
        shown = "\n".join(f"  {backend}: {check}" for backend, check in missing)
        print(
            f"failed checks without an explanation in EXPLANATIONS ({__file__}):\n{shown}\n"
            "find the cause (a defect of the implementation, with its upstream line, or of "
            "its adapter: fix that) and explain it there",
            file=sys.stderr,
        )
        status = 1
    if args.check:
        old = current_block(page)
        if old != block:
            diff = difflib.unified_diff(
                old.splitlines(keepends=True),
                block.splitlines(keepends=True),
                f"{args.docs} (documented)",
                "rendered from the reports",
            )
            sys.stdout.writelines(diff)
            print(f"\n{args.docs} is out of date: regenerate it with\n  {regenerate}")
            status = 1
        elif not missing:
            print(f"{args.docs}: the documented outcomes match the reports")
        return status
    new = replace_block(page, block)
    if new != page:
        args.docs.write_text(new, encoding="utf-8")
        print(f"{args.docs}: table updated")
    else:
        print(f"{args.docs}: already up to date")
    return status


if __name__ == "__main__":
    sys.exit(main())
