"""The whole GPU check as one prepared command: ``./dev gpu`` (or ``python scripts/gpu_check.py``).

    ./dev gpu                              CUDA, at most 8 minutes (--budget) on one GPU
    ./dev gpu --device cpu --quick         the same flow with tiny workloads (CI, seconds)
    ./dev gpu --only bench --only summary  rerun some parts into the same folder

Parts, each in its own process with a time limit, each run whatever happened to the others:

1. ``environment``: environment.txt (nvidia-smi, torch, CUDA, the GPU, package versions);
2. ``unit``: the CUDA-parametrised tests of ``tests/torch`` (``-k cuda``; quick: a few);
3. ``conformance-DTYPE``: the suite against the torch backend for float32, bfloat16 and
   float16, and ``forced-SET``: float32 with ``NONLOCAL_TORCH_STRATEGY=SET`` for strategy
   sets that cover every strategy; reports in ``conformance/*.json``;
4. ``bench``: ``python -m nonlocal_torch.bench --mode full`` into ``bench/``, then
   ``sidebyside`` (``python -m nonlocal_torch.sidebyside``, when that module exists);
5. ``summary``: ``python -m nonlocal_conformance.summary`` over the reports.

Parts 2 and 3 run side by side (``--jobs``); the benchmarks then run alone on the device.
Everything goes into one folder (``--out``; default ``$OUT`` when set, else ``build/gpu``):
``summary.md`` (each part, its status, exit code and time, then the conformance summary,
the benchmark tables and the environment: ready to paste into docs/performance.md),
``environment.txt``, ``logs/PART.log`` and the parts' own files. ``--pack`` (the default
when the folder is ``$OUT``, which brings back at most 8 files) then moves all but
summary.md and environment.txt into ``results.tar.gz``.

The parts run with ``--python`` (default: ``$PY``, else the checkout's .venv, else this
interpreter), which needs torch, numpy, pytest and hypothesis; the project's packages are
imported from this checkout (PYTHONPATH), so no install is needed. Exit status: 0 when every
part passed, 1 when any failed or ran out of time (listed), 2 when nothing could run (no
CUDA device, or a package missing).

Example:
    >>> [p.name for p in plan("cpu", quick=True)][:3]
    ['environment', 'unit', 'conformance-float32']
    >>> file_name("forced-sdpa,associative,sorted")
    'forced-sdpa_associative_sorted'
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DTYPES = ("float32", "bfloat16", "float16")
# Strategy sets forced in turn (float32): together they cover every strategy of every
# instantiation (see nonlocal_torch.strategies.ALLOWED_STRATEGIES).
FORCED = ("sdpa,associative,sorted", "chunked", "pairwise")
QUICK_FORCED = ("pairwise",)
# The conformance checks of the quick run (a handful, every instantiation).
QUICK_CHECKS = "test_output_matches_reference_in_inference or test_output_shape_and_dtype"
NO_CUDA = "no CUDA device: use --device cpu --quick to check the script"
KEPT = ("summary.md", "environment.txt")  # what --pack leaves beside results.tar.gz


@dataclasses.dataclass
class Part:
    """One part: `command` run from the checkout's root with `env` added. Parts of one `phase`
    may run side by side. `reserve`: the seconds kept for it out of the budget (it may take
    more when earlier parts took less, see `run_all`); `cap`: a hard limit (--limit)."""

    name: str
    command: list[str]
    reserve: float
    phase: int
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    cap: float | None = None
    timeout: float = 0.0  # the limit it ran under
    absent: str | None = None  # why the part cannot run (reported, not a failure)
    status: str = "not run"
    code: int | None = None
    seconds: float = 0.0


def file_name(name: str) -> str:
    """`name` as a file name: letters, digits, '.', '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def plan(device: str, quick: bool, out: Path = Path("build/gpu"), python: str = "python"):
    """The parts of a run, in order, with their commands and reserves (seconds).

    The reserves of the phases add up to the budget (`budget`): CUDA 480 s, that is the
    environment 30, unit and conformance side by side 150, bench 180 and sidebyside 90 alone
    (their timings would suffer from company), summary 30. Quick: every part but the summary
    side by side (150 s, though they take some 30 s on 2 cores), the summary 30.
    """
    pytest = [python, "-m", "pytest", "-p", "no:cacheprovider"]
    pytest += ["-p", "_hypothesis_pytestplugin", "-p", "nonlocal_conformance.plugin"]
    reports = out / "conformance"
    reserve = dict(zip(range(5), (150, 150, 150, 150, 30) if quick else (30, 150, 180, 90, 30)))
    parts = [Part("environment", [python, __file__, "--write-environment", str(out)], 0, 0)]
    if quick:
        parts.append(Part("unit", [*pytest, "tests/torch/test_module.py", "-q", "-x"], 0, 1))
        runs = [(dtype, None) for dtype in DTYPES[:2]] + [("float32", s) for s in QUICK_FORCED]
        suite = ["--hypothesis-profile=dev", "-k", QUICK_CHECKS]
    else:
        unit = [*pytest, "tests/torch", "-k", device, "-q", "-rfEs"]  # the `device` fixture
        parts.append(Part("unit", unit, 0, 1))
        runs = [(dtype, None) for dtype in DTYPES] + [("float32", s) for s in FORCED]
        suite = ["--hypothesis-profile=ci"]
    for dtype, forced in runs:
        name = f"conformance-{dtype}" if forced is None else file_name(f"forced-{forced}")
        report = reports / f"{name}.json"
        command = [*pytest, "conformance", "-q", "--backend=torch", f"--device={device}"]
        command += [f"--dtype={dtype}", *suite, f"--conformance-report={report}"]
        env = {"NONLOCAL_TORCH_STRATEGY": forced or ""}
        parts.append(Part(name, command, 0, 1, env))
    bench = [python, "-m", "nonlocal_torch.bench", "--device", device, "--out", str(out / "bench")]
    bench += ["--mode", "smoke", "--dtypes", "float32"] if quick else ["--mode", "full"]
    parts.append(Part("bench", bench, 0, 2))
    side = [python, "-m", "nonlocal_torch.sidebyside", "--device", device]
    side += ["--out", str(out / "sidebyside"), *(["--quick"] if quick else [])]
    parts.append(Part("sidebyside", side, 0, 3))
    if not (ROOT / "backends" / "nonlocal_torch" / "sidebyside.py").is_file():
        parts[-1].absent = "absent: no module nonlocal_torch.sidebyside in this checkout"
    summary = [python, __file__, "--write-summary", str(out)]
    parts.append(Part("summary", summary, 0, 4))
    for part in parts:
        if quick and part.phase < 4:
            part.phase = 1
        part.reserve = reserve[part.phase]
    return parts


def budget(parts: list[Part]) -> float:
    """The sum of the phases' reserves (a phase's parts run side by side)."""
    return sum(max(p.reserve for p in parts if p.phase == q) for q in {p.phase for p in parts})


def run_part(part: Part, out: Path, timeout: float, env: dict[str, str]) -> None:
    """Run `part` with its output in out/logs/NAME.log; kill its process group on timeout."""
    log = out / "logs" / f"{file_name(part.name)}.log"
    started = time.monotonic()
    if timeout <= 0:
        part.status, part.code = "FAILED (no time left in the budget)", None
        log.write_text("not run: no time left in the budget\n")
        return
    with log.open("w") as stream:
        stream.write(f"$ {' '.join(part.command)}  (limit {timeout:.0f} s)\n")
        stream.flush()
        try:
            proc = subprocess.Popen(
                part.command,
                cwd=ROOT,
                env={**env, **part.env},
                stdout=stream,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: a timeout ends its children
            )
        except OSError as exc:
            part.status = f"FAILED ({type(exc).__name__}: {exc})"
            stream.write(f"{part.status}\n")
            return
        try:
            part.code = proc.wait(timeout=timeout)
            part.status = "ok" if part.code == 0 else f"FAILED (exit {part.code})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            part.code = proc.wait()
            part.status = f"TIMEOUT (killed after {timeout:.0f} s)"
            stream.write(f"\n== killed: over its limit of {timeout:.0f} s\n")
    part.seconds = time.monotonic() - started


def report_done(part: Part, out: Path) -> None:
    print(f"== {part.name}: {part.status} ({part.seconds:.1f} s)", flush=True)
    log = out / "logs" / f"{file_name(part.name)}.log"
    if part.status != "ok" and log.is_file():
        lines = log.read_text(errors="replace").splitlines(keepends=True)
        print("".join(lines[-40:]), end="", flush=True)


def run_all(parts: list[Part], out: Path, deadline: float, jobs: int, env: dict[str, str]) -> None:
    """Run the parts phase by phase, a phase's parts `jobs` at a time, by `deadline` (a
    `time.monotonic` time).

    A part may run until the deadline less the reserves of the later phases (and at most its
    `cap`): it gets at least its own reserve when the earlier parts kept to theirs, and the
    time they left unused."""
    phases = sorted({p.phase for p in parts})
    for phase in phases:
        group = [p for p in parts if p.phase == phase]
        later = sum(
            max([p.reserve for p in parts if p.phase == q and p.absent is None], default=0)
            for q in phases
            if q > phase
        )
        for part in group:
            if part.absent is not None:
                part.status = part.absent
                report_done(part, out)
        runnable = [p for p in group if p.absent is None]
        lanes = max(1, min(jobs, len(runnable)))
        lane_env = env
        if lanes > 1 and "OMP_NUM_THREADS" not in env:  # share the cores, don't fight for them
            lane_env = {**env, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // lanes))}

        def one(part: Part, later: float = later, lane_env: dict[str, str] = lane_env) -> Part:
            left = deadline - later - time.monotonic()
            part.timeout = max(0.0, left if part.cap is None else min(part.cap, left))
            run_part(part, out, part.timeout, lane_env)
            return part

        with concurrent.futures.ThreadPoolExecutor(max_workers=lanes) as pool:
            for done in concurrent.futures.as_completed([pool.submit(one, p) for p in runnable]):
                report_done(done.result(), out)


# The environment and summary parts (run as this script, in their own process) -------------


ENVIRONMENT_CODE = """
import platform, sys
print("python", sys.version.split()[0], sys.executable)
try:
    import torch
except Exception as exc:
    print("torch: cannot import:", exc)
    raise SystemExit(1)
print("torch", torch.__version__, "| CUDA build", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version())
print("cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"gpu {i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, "
              f"compute capability {p.major}.{p.minor}, {p.multi_processor_count} SMs")
for name in ("numpy", "pytest", "hypothesis", "mpmath", "matplotlib"):
    try:
        print(name, __import__(name).__version__)
    except Exception as exc:
        print(name, "missing:", type(exc).__name__)
print("threads", torch.get_num_threads())
"""


def _output(command: list[str], timeout: float = 30) -> tuple[int, str]:
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, f"{type(exc).__name__}: {exc}\n"
    return done.returncode, done.stdout + done.stderr


def write_environment(out: Path) -> int:
    """environment.txt: date, machine, commit, interpreter and packages, nvidia-smi."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    lines = [f"date {now}", f"host {platform.node()} {platform.platform()}"]
    lines.append(f"cpus {os.cpu_count()}")
    code, commit = _output(["git", "rev-parse", "HEAD"]) if shutil.which("git") else (1, "")
    lines.append(f"commit {commit.strip() if code == 0 else 'unknown (no git checkout)'}")
    code, text = _output([sys.executable, "-c", ENVIRONMENT_CODE], timeout=120)
    lines += text.rstrip("\n").splitlines()
    if shutil.which("nvidia-smi"):
        smi_code, smi = _output(["nvidia-smi"])
        lines += ["", "$ nvidia-smi", *smi.rstrip("\n").splitlines()]
        code = code or smi_code
    else:
        lines += ["", "nvidia-smi: not found"]
    (out / "environment.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return code


def write_summary(out: Path) -> int:
    """conformance-summary.txt: the summary table of the dtype reports, then one per forced
    strategy set (the summary merges reports of the same backend, dtype and device)."""
    reports = sorted((out / "conformance").glob("*.json"))
    if not reports:
        print(f"no conformance reports in {out / 'conformance'}")
        (out / "conformance-summary.txt").write_text("no conformance reports\n")
        return 1
    groups = [[r for r in reports if not r.name.startswith("forced-")]]
    groups += [[r] for r in reports if r.name.startswith("forced-")]
    worst, text = 0, []
    for group in filter(None, groups):
        names = ", ".join(r.stem for r in group)
        command = [sys.executable, "-m", "nonlocal_conformance.summary", *map(str, group)]
        code, output = _output(command, timeout=60)
        worst = max(worst, code)
        text.append(f"{names}:\n{output.rstrip()}\n")
    (out / "conformance-summary.txt").write_text("\n".join(text))
    print("\n".join(text))
    return worst


# summary.md ---------------------------------------------------------------------------


def _read(path: Path) -> str | None:
    return path.read_text(errors="replace").rstrip("\n") if path.is_file() else None


def parts_table(parts: list[Part]) -> list[str]:
    """The Markdown table of the parts and the line that follows it."""
    failed = [p.name for p in parts if p.status != "ok" and not p.status.startswith("absent")]
    lines = ["| part | status | exit | time (s) | limit (s) |", "|---|---|---|---|---|"]
    for p in parts:
        code = "" if p.code is None else str(p.code)
        lines.append(f"| {p.name} | {p.status} | {code} | {p.seconds:.1f} | {p.timeout:.0f} |")
    return [*lines, "", f"FAILED: {', '.join(failed)}" if failed else "Every part passed."]


def markdown(parts: list[Part], out: Path, command: str, seconds: float) -> str:
    """summary.md: the parts table, then the conformance summary, benchmarks, environment."""
    env = _read(out / "environment.txt") or ""
    gpu = next((line.split(": ", 1)[1] for line in env.splitlines() if line[:4] == "gpu "), "")
    torch_line = next((line for line in env.splitlines() if line.startswith("torch ")), "")
    lines = [f"# GPU check: {gpu or 'no GPU'}", ""]
    lines += [f"`{command}`: {torch_line or 'torch unknown'}; {seconds:.0f} s in all.", ""]
    lines += [*parts_table(parts), ""]
    sections = [
        ("Conformance summary", _read(out / "conformance-summary.txt"), True),
        ("Benchmark", _read(out / "bench" / "bench.md"), False),
    ]
    for md in sorted((out / "sidebyside").glob("*.md")):
        sections.append((f"Side by side: {md.name}", _read(md), False))
    sections.append(("Environment", env, True))
    for title, body, verbatim in sections:
        if body:
            fence = ["```text", body, "```"] if verbatim else [body]
            lines += [f"## {title}", "", *fence, ""]
    return "\n".join(lines)


def pack(out: Path) -> None:
    """Move everything in `out` but `KEPT` into out/results.tar.gz."""
    archive = out / "results.tar.gz"
    archive.unlink(missing_ok=True)
    members = [p for p in sorted(out.iterdir()) if p.name not in KEPT]
    with tarfile.open(archive, "w:gz") as tar:
        for path in members:
            tar.add(path, arcname=path.name)
    for path in members:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def preflight(python: str, device: str) -> str | None:
    """Why nothing can run (a package missing, no CUDA device), or None."""
    code = "import numpy, pytest, hypothesis, torch; print(int(torch.cuda.is_available()))"
    status, text = _output([python, "-c", code], timeout=180)
    if status != 0:
        last = (text.strip().splitlines() or ["no output"])[-1]
        return f"{python} cannot run the check (it needs numpy, pytest, hypothesis, torch): {last}"
    if device == "cuda" and text.strip().splitlines()[-1:] != ["1"]:
        return NO_CUDA
    return None


def default_python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return os.environ.get("PY") or (str(venv) if venv.exists() else sys.executable)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny workloads (CI)")
    outdir = os.environ.get("OUT") or "build/gpu"
    parser.add_argument("--out", default=outdir, help=f"results folder (default {outdir})")
    parser.add_argument("--python", default=None, help="interpreter of the parts")
    parser.add_argument("--jobs", type=int, default=None, help="parts side by side")
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds in all (CUDA: 480, quick: 180)"
    )
    parser.add_argument("--only", action="append", default=[], metavar="PART")
    parser.add_argument(
        "--limit", action="append", default=[], metavar="PART=SECONDS", help="a part's limit"
    )
    parser.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--write-environment", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--write-summary", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write_environment:
        return write_environment(Path(args.write_environment))
    if args.write_summary:
        return write_summary(Path(args.write_summary))

    started = time.monotonic()
    python = args.python or default_python()
    out = Path(args.out).resolve()
    parts = plan(args.device, args.quick, out, python)
    names = [p.name for p in parts]
    limits = {}
    for item in args.limit:
        name, _, seconds = item.partition("=")
        if name not in names or not re.fullmatch(r"\d+(\.\d+)?", seconds):
            parser.error(f"--limit {item!r}: expected PART=SECONDS, PART one of {names}")
        limits[name] = float(seconds)
    unknown = [n for n in args.only if n not in names]
    if unknown:
        parser.error(f"--only {unknown}: expected parts among {names}")
    if args.only:
        parts = [p for p in parts if p.name in args.only]
    for part in parts:
        part.cap = limits.get(part.name)
    why = preflight(python, args.device)
    if why:
        print(why, file=sys.stderr)
        return 2

    # Only what this run writes is replaced: --out may name a folder holding other files.
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    for stale in ("summary.md", "results.tar.gz"):
        (out / stale).unlink(missing_ok=True)
    for part in parts:
        (out / "logs" / f"{file_name(part.name)}.log").unlink(missing_ok=True)
        if part.name.startswith(("conformance-", "forced-")):
            (out / "conformance" / f"{file_name(part.name)}.json").unlink(missing_ok=True)
        elif part.name in ("bench", "sidebyside"):
            shutil.rmtree(out / part.name, ignore_errors=True)
    seconds = args.budget or budget(parts)
    side_by_side = sum(p.phase == 1 for p in parts) or 1
    jobs = args.jobs or min(side_by_side, max(2, (os.cpu_count() or 1) // 2))
    packages = os.pathsep.join(str(ROOT / f) for f in ("", "backends", "conformance"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (packages, env.get("PYTHONPATH"))))
    env["PYTHONUNBUFFERED"] = "1"
    # The same pytest plugins everywhere (a GPU image may hold many): named with -p instead.
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(ROOT / "build" / "hypothesis"))
    print(f"== ./dev gpu: {', '.join(p.name for p in parts)} into {out}", flush=True)
    print(f"   python {python}, budget {seconds:.0f} s, {jobs} side by side", flush=True)
    run_all(parts, out, started + seconds, jobs, env)  # the budget counts from the start

    command = "./dev gpu " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(parts, out, command.strip(), time.monotonic() - started)
    (out / "summary.md").write_text(text + "\n")
    if args.pack or (args.pack is None and os.environ.get("OUT") and out == Path(outdir).resolve()):
        pack(out)
    # The parts again at the end: a long summary.md would push them out of a short tail.
    print(text, "", "== ./dev gpu parts", *parts_table(parts), sep="\n", flush=True)
    failed = [p.name for p in parts if p.status != "ok" and not p.status.startswith("absent")]
    if failed:
        print(f"./dev gpu FAILED: {' '.join(failed)} (see {out / 'summary.md'})")
        return 1
    print(f"./dev gpu passed: {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
