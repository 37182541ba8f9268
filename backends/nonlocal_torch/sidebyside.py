"""Side by side: our block against the published formulations, interleaved in one process.

    python -m nonlocal_torch.sidebyside --quick            # CI: tiny shapes, seconds
    python -m nonlocal_torch.sidebyside                    # CPU cases (a few minutes, 2 cores)
    python -m nonlocal_torch.sidebyside --device cuda      # the six GPU cases, bf16 autocast

For each case every candidate - ``ours`` (`NonLocalBlock`, ``strategy="auto"``) and each
published formulation of `nonlocal_torch.formulations` that computes the same function - is
built on the same weights and the same input, checked against ours once (``max |z - z_ours|``),
warmed up, then timed over R rounds; each round calls every candidate once, in an order that
rotates from round to round, so load on a shared machine falls on all of them alike. Rows
give the median, min and max milliseconds per call, the peak memory of one call (the CPU
profiler's allocation log, or ``torch.cuda.max_memory_allocated``, as in
`nonlocal_torch.bench`), and for ours the ratio to the fastest published candidate (<= 1:
at least at parity), overall and among those computing exactly the same function (same
pool position). A published candidate whose N x N' intermediates would exceed the memory
limit is reported as skipped instead of run. Writes ``sidebyside.md`` and
``sidebyside.json`` into ``--out``. No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from nonlocal_core import random_weights
from nonlocal_core.cli import output_folder

from . import formulations
from .bench import (
    Case,
    _device,
    _dtypes,
    _limit_gib,
    _peak_mib,
    _threads,
    anchor_cases,
    count,
    use_device_and_threads,
)
from .block import NonLocalBlock

MIB = 2**20
GIB = 2**30
AFTER, BEFORE = formulations.AFTER, formulations.BEFORE
# Published formulations exist for both pool positions, except the concatenation (AlexHex7
# and mmcv only, pooling after the convs).
PUBLISHED_POSITIONS = {
    "embedded_gaussian": (AFTER, BEFORE),
    "dot_product": (AFTER, BEFORE),
    "concatenation": (AFTER,),
}
EMBEDDED_DOT = ("embedded_gaussian", "dot_product")
ALL_THREE = ("embedded_gaussian", "dot_product", "concatenation")


# Cases -------------------------------------------------------------------------------------------


def _cases(name: str, b: int, c: int, s: tuple, pooled: bool, insts: tuple, passes: tuple):
    return [Case(name, inst, b, c, s, pooled, backward) for inst in insts for backward in passes]


def gpu_cases() -> list[Case]:
    """The six end-to-end cases of the anchors table (every instantiation; what cannot fit is
    skipped by the memory estimate), and the paper's res3 setting forward and backward."""
    res3 = _cases(
        "2x512x4x28x28 pooled (res3)", 2, 512, (4, 28, 28), True, EMBEDDED_DOT, (False, True)
    )
    return anchor_cases() + res3


def cpu_cases() -> list[Case]:
    """The GPU cases scaled to a 2-core CPU, keeping their structure, plus an N sweep.

    C / 4, batch 8 -> 2, and T, H, W cut (halved; T quartered in the largest case) so
    that N stays CPU-sized, the N x N' matrix of the largest case still over 4 GiB; pooled
    cases stay pooled, and the concatenation is tried where the GPU table tried it (its
    tensor then fits in 4 GiB in the second case only, as on the GPU). The paper's res3
    setting 2x512x4x28x28, keys pooled (1, 2, 2), stays at full size: the issue measured it.
    """
    one, both = (False,), (False, True)
    rows = [
        ("2x128x4x28x28 pooled (GPU 8x512x8x28x28)", 2, 128, (4, 28, 28), True, ALL_THREE, one),
        ("2x256x4x14x14 pooled (GPU 8x1024x8x14x14)", 2, 256, (4, 14, 14), True, ALL_THREE, one),
        ("2x128x1x64x64 (GPU 2x512x1x128x128)", 2, 128, (1, 64, 64), False, EMBEDDED_DOT, one),
        ("1x128x8x28x28 (GPU 1x512x16x56x56)", 1, 128, (8, 28, 28), False, EMBEDDED_DOT, both),
        ("1x64x8x56x56 (GPU 1x256x32x112x112)", 1, 64, (8, 56, 56), False, EMBEDDED_DOT, one),
        ("2x512x4x28x28 pooled (res3)", 2, 512, (4, 28, 28), True, ("embedded_gaussian",), both),
    ]
    cases = [case for row in rows for case in _cases(*row)]
    for side in (16, 32, 64):
        cases += _cases(f"sweep 1x64x{side}x{side}", 1, 64, (side, side), False, EMBEDDED_DOT, both)
    return cases


def quick_cases() -> list[Case]:
    """Tiny shapes for CI: every formulation, both pool positions, 2D and 3D, both passes."""
    return _cases("quick 2x8x8x8 pooled", 2, 8, (8, 8), True, ALL_THREE, (False, True)) + _cases(
        "quick 1x8x2x6x6", 1, 8, (2, 6, 6), False, ("embedded_gaussian",), (False,)
    )


# Candidates --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Candidate:
    """One implementation of a case: ours on one pool position, or a published formulation
    reading that block's weights."""

    label: str
    kind: str  # "ours" or a name in formulations.FORMULATIONS
    position: str
    forward: Callable[[torch.Tensor], torch.Tensor] | None
    block: NonLocalBlock | None
    status: str = "ok"
    samples: list[float] = dataclasses.field(default_factory=list)
    peak_mib: float | None = None
    max_abs_diff: float | None = None


def _positions(case: Case) -> tuple[str, ...]:
    return PUBLISHED_POSITIONS[case.instantiation] if case.subsample else (AFTER,)


def candidates(case: Case, device: str, dtype: str, limit_gib: float) -> list[Candidate]:
    """Ours on each pool position a published formulation uses (one when keys are not
    pooled: the position does not matter then), each followed by the published formulations
    that compute its function, all on the same canonical weights."""
    positions = _positions(case)
    itemsize = 2 if dtype == "bfloat16" else 4
    inter = case.channels // 2
    weights = None
    out = []
    for position in positions:
        block = case.block(device, pool_position=position)
        weights = random_weights(block.config, seed=0) if weights is None else weights
        block.load_canonical_weights(weights)
        suffix = f" (pool {position.split('_')[0]})" if len(positions) > 1 else ""
        out.append(Candidate("ours" + suffix, "ours", position, block, block))
        for name in formulations.applicable(block):
            spec = formulations.FORMULATIONS[name]
            label = spec.label + (suffix if spec.pool_position is None else "")
            need = formulations.pairwise_bytes(
                name, case.batch, case.num_queries, case.num_keys, inter, itemsize, case.backward
            )
            if need > limit_gib * GIB:
                status = f"skipped (would need {need / GIB:.1f} GiB)"
                out.append(Candidate(label, name, position, None, None, status))
                continue
            forward = (lambda f, b: lambda t: f(b, t))(spec.forward, block)
            out.append(Candidate(label, name, position, forward, block))
    return out


# Measuring ---------------------------------------------------------------------------------------


def _step(candidate: Candidate, x: torch.Tensor, backward: bool, autocast) -> Callable[[], None]:
    def step() -> None:
        with autocast, torch.set_grad_enabled(backward):
            z = candidate.forward(x)
        if backward:
            z.float().sum().backward()
            candidate.block.zero_grad(set_to_none=True)
            x.grad = None

    return step


def _time_once(fn: Callable[[], None], device: str) -> float:
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def rotation(items: list, round_index: int) -> list:
    """The order of one round: `items` rotated left by the round's index.

    Example:
        >>> [rotation(["a", "b", "c"], r) for r in range(4)]
        [['a', 'b', 'c'], ['b', 'c', 'a'], ['c', 'a', 'b'], ['a', 'b', 'c']]
    """
    k = round_index % len(items) if items else 0
    return items[k:] + items[:k]


def _oom(candidate: Candidate, device: str) -> None:
    candidate.status = "out of memory"
    candidate.samples = []
    if device == "cuda":
        torch.cuda.empty_cache()


def measure(case: Case, device: str, dtype: str, warmup: int, rounds: int, limit_gib: float):
    """The candidates of one case, checked, warmed up, timed interleaved and measured."""
    cands = candidates(case, device, dtype, limit_gib)
    torch.manual_seed(1)
    x = torch.randn(case.batch, case.channels, *case.spatial, device=device)
    x.requires_grad_(case.backward)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    live = [c for c in cands if c.status == "ok"]
    # Agreement with ours on the same block (same position), once, without gradients.
    reference: dict[str, torch.Tensor] = {}
    for c in live:
        try:
            with autocast, torch.no_grad():
                z = c.forward(x).float()
        except torch.OutOfMemoryError:
            _oom(c, device)
            continue
        if c.kind == "ours":
            reference[c.position] = z
        if c.position in reference:
            c.max_abs_diff = float((z - reference[c.position]).abs().max())
        del z
    reference.clear()
    steps = {id(c): _step(c, x, case.backward, autocast) for c in live}
    live = [c for c in live if c.status == "ok"]
    for c in live:
        try:
            for _ in range(warmup):
                steps[id(c)]()
        except torch.OutOfMemoryError:
            _oom(c, device)
    for r in range(rounds):
        live = [c for c in live if c.status == "ok"]
        for c in rotation(live, r):
            try:
                c.samples.append(_time_once(steps[id(c)], device))
            except torch.OutOfMemoryError:
                _oom(c, device)
    for c in live:
        if c.status == "ok":
            try:
                c.peak_mib = _peak_mib(steps[id(c)], device)
            except torch.OutOfMemoryError:
                _oom(c, device)
    if device == "cuda":
        torch.cuda.empty_cache()
    return cands


def _rows(case: Case, cands: list[Candidate], device: str, dtype: str) -> list[dict]:
    median = {id(c): statistics.median(c.samples) for c in cands if c.status == "ok"}
    published = [c for c in cands if c.kind != "ours" and id(c) in median]
    rows = []
    for c in cands:
        row = {
            "case": case.name,
            "instantiation": case.instantiation,
            "pass": "fwd+bwd" if case.backward else "fwd",
            "dtype": dtype,
            "device": device,
            "candidate": c.label,
            "kind": c.kind,
            "pool_position": c.position if case.subsample else None,
            "B": case.batch,
            "C": case.channels,
            "spatial": list(case.spatial),
            "N": case.num_queries,
            "N_keys": case.num_keys,
            "status": c.status,
            "median_ms": None,
            "min_ms": None,
            "max_ms": None,
            "rounds": len(c.samples),
            "peak_mib": None if c.peak_mib is None else round(c.peak_mib, 2),
            "max_abs_diff": c.max_abs_diff,
            "ratio": None,
            "ratio_same_function": None,
        }
        if id(c) in median:
            row.update(
                median_ms=round(median[id(c)], 4),
                min_ms=round(min(c.samples), 4),
                max_ms=round(max(c.samples), 4),
            )
        if c.kind == "ours" and id(c) in median:
            same = [p for p in published if p.position == c.position]
            if published:
                row["ratio"] = round(median[id(c)] / min(median[id(p)] for p in published), 3)
            if same:
                best = min(median[id(p)] for p in same)
                row["ratio_same_function"] = round(median[id(c)] / best, 3)
        rows.append(row)
    return rows


def run(
    cases: list[Case],
    *,
    device: str = "cpu",
    dtype: str = "float32",
    warmup: int = 1,
    rounds: int = 5,
    limit_gib: float | None = None,
    log: Callable[[str], None] | None = print,
) -> list[dict]:
    """Rows for every case and candidate (see the module docstring); `limit_gib` defaults
    to 4 on the CPU and 40 on CUDA.

    Example:
        >>> rows = run(quick_cases()[:1], rounds=2, log=None)
        >>> [(r["candidate"], r["status"]) for r in rows]  # doctest: +NORMALIZE_WHITESPACE
        [('ours (pool after)', 'ok'), ('AlexHex7 embedded', 'ok'),
         ('ours (pool before)', 'ok'), ('SlowFast embedded', 'ok')]
    """
    limit = limit_gib if limit_gib is not None else (40.0 if device == "cuda" else 4.0)
    rows = []
    for case in cases:
        cands = measure(case, device, dtype, warmup, rounds, limit)
        case_rows = _rows(case, cands, device, dtype)
        rows += case_rows
        if log is not None:
            for r in case_rows:
                log(
                    f"{r['case']:44s} {r['instantiation']:17s} {r['pass']:7s} "
                    f"{r['candidate']:40s} {_ms(r)} ms {_cell(r['peak_mib'])} MiB "
                    f"ratio {_cell(r['ratio'])}"
                )
    return rows


# Reporting ---------------------------------------------------------------------------------------


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _ms(row: dict) -> str:
    if row["status"] != "ok":
        return row["status"]
    return f"{row['median_ms']:.3g} ({row['min_ms']:.3g}-{row['max_ms']:.3g})"


def header(device: str, dtypes: str, warmup: int, rounds: int, limit_gib: float) -> list[str]:
    """What the numbers depend on: machine, threads, OMP_WAIT_POLICY, settings."""
    policy = os.environ.get("OMP_WAIT_POLICY")
    policy_note = (
        f"OMP_WAIT_POLICY={policy} (set)"
        if policy
        else "OMP_WAIT_POLICY is not set (OpenMP threads may spin between calls; "
        "PASSIVE is advised on a shared machine)"
    )
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor()
    return [
        f"device: {device} ({name or platform.machine()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s), {os.cpu_count()} CPU(s)"
        + (f", load average {os.getloadavg()[0]:.2f} at the start" if device == "cpu" else ""),
        policy_note,
        f"dtype(s): {dtypes}{' (autocast)' if 'bfloat16' in dtypes else ''}; warm-up {warmup}, "
        f"{rounds} interleaved rounds (rotating order); memory limit {limit_gib:g} GiB",
    ]


def table(rows: list[dict]) -> str:
    """A Markdown table: one line per candidate; ratios on ours' lines.

    Example:
        >>> print(table([]))
        | case | pass | dtype | candidate | median ms | min ms | max ms | peak MiB | max abs diff vs ours | ours / fastest published | ours / same-function published |
        |---|---|---|---|---|---|---|---|---|---|---|
    """  # noqa: E501
    columns = ["case", "pass", "dtype", "candidate", "median ms", "min ms", "max ms"]
    columns += ["peak MiB", "max abs diff vs ours", "ours / fastest published"]
    columns += ["ours / same-function published"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for r in rows:
        name = f"{r['case']} {r['instantiation']}"
        timing = (
            [_cell(r["median_ms"]), _cell(r["min_ms"]), _cell(r["max_ms"])]
            if r["status"] == "ok"
            else [r["status"], "-", "-"]
        )
        diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
        cells = [name, r["pass"], r["dtype"], r["candidate"], *timing, _cell(r["peak_mib"])]
        cells += [diff, _cell(r["ratio"]), _cell(r["ratio_same_function"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Command line ------------------------------------------------------------------------------------


def _rounds(text: str) -> int:
    """``--rounds``: an integer from 1 to 1000.

    Example:
        >>> _rounds("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: '0' is not a round count: expected an integer from 1 to 1000
    """
    return count(text, 1000, "round count")


def main(argv: list[str] | None = None) -> dict:
    """Run the side-by-side benchmark; returns the JSON document it writes.

    Every option is checked before anything runs: a bad value is a usage error (exit status
    2) naming the option, the value and what it accepts.

    Example:
        >>> main(["--rounds", "0"])
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """
    parser = argparse.ArgumentParser(
        prog="python -m nonlocal_torch.sidebyside",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny shapes, 1 warm-up, 3 rounds (for CI)"
    )
    parser.add_argument(
        "--device",
        type=_device,
        default="cpu",
        help="cpu (the CPU cases) or cuda (the GPU cases)",
    )
    parser.add_argument(
        "--dtypes",
        type=_dtypes,
        default=None,
        help="float32 and/or bfloat16 (autocast); default float32 on cpu, bfloat16 on cuda",
    )
    parser.add_argument(
        "--out",
        type=output_folder("a folder for sidebyside.json and sidebyside.md (created if missing)"),
        default="benchmarks/sidebyside",
        help="output folder (default benchmarks/sidebyside)",
    )
    parser.add_argument(
        "--limit-gib",
        type=_limit_gib,
        default=None,
        help="skip published candidates needing more (default 4 on cpu, 40 on cuda)",
    )
    parser.add_argument("--rounds", type=_rounds, default=None, help="timed rounds per case")
    parser.add_argument("--threads", type=_threads, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    use_device_and_threads(parser, args)
    cuda = args.device == "cuda"
    dtypes = args.dtypes or ("bfloat16" if cuda else "float32")
    limit = args.limit_gib or (40.0 if cuda else 4.0)
    if args.quick:
        cases, warmup, rounds = quick_cases(), 1, 3
    elif cuda:
        cases, warmup, rounds = gpu_cases(), 5, 20
    else:
        cases, warmup, rounds = cpu_cases(), 1, 5
    rounds = args.rounds or rounds
    head = header(args.device, dtypes, warmup, rounds, limit)
    print("\n".join(head), flush=True)
    start = time.perf_counter()
    rows = []
    for dtype in dtypes.split(","):
        rows += run(
            cases, device=args.device, dtype=dtype, warmup=warmup, rounds=rounds, limit_gib=limit
        )
    doc = {
        "mode": "quick" if args.quick else "default",
        "device": args.device,
        "header": head,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "warmup": warmup,
        "rounds": rounds,
        "limit_gib": limit,
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bullets = [f"- {line}" for line in head]
    title = "# Side by side: ours vs the published formulations"
    text = "\n".join([title, "", *bullets, "", table(rows)])
    (out / "sidebyside.md").write_text(text + "\n")
    (out / "sidebyside.json").write_text(json.dumps(doc, indent=1))
    print(table(rows))
    print(f"{doc['seconds']} s; wrote {out / 'sidebyside.md'}, {out / 'sidebyside.json'}")
    return doc


if __name__ == "__main__":
    main()
