"""Benchmarks: our block against a naive materialising block of the same math.

    python -m nonlocal_torch.bench --mode smoke            # CI: tiny sizes, seconds
    python -m nonlocal_torch.bench --mode full             # CPU sweep up to N = 16384
    python -m nonlocal_torch.bench --mode full --device cuda   # + the six anchor cases,
                                                               # and nonlocal_torch.sidebyside

Time is the median over repeats after warm-up (CUDA events on a GPU); peak memory is what
the run allocates above its inputs and weights (``torch.cuda.max_memory_allocated`` on a
GPU, the profiler's allocation log on the CPU). Prints tables, writes ``bench.json`` and a
log-log plot ``bench.png`` (time and memory against N) into ``--out``. There are no timing
assertions anywhere: numbers are for reading.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from nonlocal_core.cli import output_folder

from .block import NonLocalBlock

MIB = 2**20
IMPLS = ("ours", "naive")


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark shape: B x C x (*S), an instantiation, pooled keys or not."""

    name: str
    instantiation: str
    batch: int
    channels: int
    spatial: tuple[int, ...]
    subsample: bool = False
    backward: bool = False

    @property
    def num_queries(self) -> int:
        return math.prod(self.spatial)

    @property
    def num_keys(self) -> int:
        if not self.subsample:
            return self.num_queries
        window = {1: (2,), 2: (2, 2), 3: (1, 2, 2)}[len(self.spatial)]
        return math.prod(s // w for s, w in zip(self.spatial, window))

    def block(self, device: str, **options) -> NonLocalBlock:
        """A new block for this case (torch's seed 0), training mode when it has backward.

        Example:
            >>> Case("c", "dot_product", 1, 8, (4, 4), subsample=True).block("cpu").config.subsample
            (2, 2)
        """
        torch.manual_seed(0)
        block = NonLocalBlock(
            self.channels,
            spatial_dims=len(self.spatial),
            instantiation=self.instantiation,
            subsample=self.subsample,
            device=device,
            **options,
        )
        return block.train(self.backward)


def anchor_cases() -> list[Case]:
    """The six end-to-end cases of the anchors table (shared/notes/anchors.md)."""
    rows = [
        ("8x512x8x28x28 pooled", 8, 512, (8, 28, 28), True, False),
        ("8x1024x8x14x14 pooled", 8, 1024, (8, 14, 14), True, False),
        ("2x512x1x128x128", 2, 512, (1, 128, 128), False, False),
        ("1x512x16x56x56", 1, 512, (16, 56, 56), False, False),
        ("1x512x16x56x56 fwd+bwd", 1, 512, (16, 56, 56), False, True),
        ("1x256x32x112x112", 1, 256, (32, 112, 112), False, False),
    ]
    return [
        Case(name, inst, b, c, s, sub, bwd)
        for name, b, c, s, sub, bwd in rows
        for inst in ("embedded_gaussian", "dot_product", "concatenation")
    ]


def sweep_cases(sides: list[int], channels: int, backward: bool) -> list[Case]:
    """N = side^2 positions, N' = N keys, every instantiation."""
    return [
        Case(f"sweep N={side * side}", inst, 1, channels, (side, side), False, backward)
        for inst in ("gaussian", "embedded_gaussian", "dot_product", "concatenation")
        for side in sides
    ]


# The naive block: the same weights and math, with the N x N' matrix (and, for
# concatenation, the B x 2C' x N x N' tensor) built the way earlier implementations do.


def naive_forward(block: NonLocalBlock, x: torch.Tensor) -> torch.Tensor:
    """z computed by materialising the pairwise matrix (channels_first, no mask/context).

    Example:
        >>> block = NonLocalBlock(4, spatial_dims=1, instantiation="concatenation").eval()
        >>> x = torch.randn(2, 4, 6)
        >>> bool(torch.allclose(naive_forward(block, x), block(x), atol=1e-6))
        True
    """
    cfg = block.config
    theta = x if block.theta is None else block.theta(x)
    phi, g = block._keys_and_values(x)
    batch, n, m = x.shape[0], theta[0, 0].numel(), phi[0, 0].numel()
    t = theta.flatten(2).transpose(1, 2)  # (B, N, d), a strided view as in those codes
    values = g.flatten(2).transpose(1, 2)
    if cfg.instantiation == "concatenation":
        w = block.concat.weight[0]
        half = w.shape[0] // 2
        pairs = torch.cat(
            [
                theta.flatten(2)[:, :, :, None].expand(-1, -1, -1, m),
                phi.flatten(2)[:, :, None, :].expand(-1, -1, n, -1),
            ],
            dim=1,
        )  # B x 2C' x N x N'
        f = torch.relu(F.conv2d(pairs, w.view(1, 2 * half, 1, 1).to(pairs.dtype)))[:, 0]
        attention = f / m
    else:
        f = t @ phi.flatten(2)
        attention = torch.softmax(cfg.scale * f, -1) if cfg.is_softmax else f / m
    y = (attention.to(values.dtype) @ values).transpose(1, 2)
    u = block.out(y.reshape(batch, -1, *x.shape[2:]))
    if block.norm is not None:
        u = block.norm(u)
    return u + x if cfg.residual else u


def naive_bytes(case: Case, itemsize: int) -> int:
    """What the naive block's largest tensors need (the N x N' matrix, and B x 2C' x N x N')."""
    pairwise = case.batch * case.num_queries * case.num_keys * itemsize
    if case.instantiation == "concatenation":
        return pairwise * (case.channels + 2)  # 2C' = C channels, plus f and a
    return pairwise * 3


# Measuring -----------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_ms(fn: Callable[[], None], device: str, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def _peak_mib(fn: Callable[[], None], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / MIB
    # CPU: the profiler logs every allocation with the running total since it started.
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as handle:
            events = json.load(handle)["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max([0, *totals]) / MIB


def run_case(
    case: Case, impl: str, dtype: str, device: str, warmup: int, repeats: int, naive_limit: float
) -> dict:
    """One measurement row: time_ms, peak_mib and status ('ok', 'oom' or 'skipped: ...')."""
    row = {**dataclasses.asdict(case), "impl": impl, "dtype": dtype, "device": device}
    row.update(N=case.num_queries, N_keys=case.num_keys, time_ms=None, peak_mib=None)
    itemsize = 2 if dtype == "bfloat16" else 4
    if impl == "naive" and naive_bytes(case, itemsize) > naive_limit * 2**30:
        need = naive_bytes(case, itemsize) / 2**30
        row["status"] = f"skipped: needs ~{need:.1f} GiB (limit {naive_limit} GiB)"
        return row
    block = case.block(device)
    x = torch.randn(case.batch, case.channels, *case.spatial, device=device)
    x.requires_grad_(case.backward)
    forward = block if impl == "ours" else (lambda t: naive_forward(block, t))
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def step() -> None:
        with autocast, torch.set_grad_enabled(case.backward):
            z = forward(x)
        if case.backward:
            z.float().square().mean().backward()
            block.zero_grad(set_to_none=True)
            x.grad = None

    try:
        row["time_ms"] = round(_time_ms(step, device, warmup, repeats), 4)
        row["peak_mib"] = round(_peak_mib(step, device), 2)
        row["status"] = "ok"
    except torch.OutOfMemoryError:
        row["status"] = "oom"
    finally:
        if device == "cuda":
            torch.cuda.empty_cache()
    return row


# Reporting -----------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    """A Markdown table, one line per case, ours and naive side by side."""
    columns = ["case", "instantiation", "pass", "dtype", "N", "N'"]
    columns += ["ours ms", "ours MiB", "naive ms", "naive MiB"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    keyed: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        key = (r["name"], r["instantiation"], r["backward"], r["dtype"], r["N"], r["N_keys"])
        keyed.setdefault(key, {})[r["impl"]] = r

    def cell(r: dict | None, field: str) -> str:
        if r is None:
            return "-"
        if r["status"] != "ok":
            return "OOM" if r["status"] == "oom" else "skip"
        return f"{r[field]:.3g}"

    for (name, inst, bwd, dtype, n, m), impls in keyed.items():
        ours, naive = impls.get("ours"), impls.get("naive")
        pass_ = "fwd+bwd" if bwd else "fwd"
        lines.append(
            f"| {name} | {inst} | {pass_} | {dtype} | {n} | {m} | {cell(ours, 'time_ms')} | "
            f"{cell(ours, 'peak_mib')} | {cell(naive, 'time_ms')} | {cell(naive, 'peak_mib')} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Log-log time and peak memory against N for the sweep rows, with the N x N' size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The sizes of the documentation's figures (scripts/plot_benchmarks.py, STYLE), so this
    # quick look reads the same when shown at a page's width.
    sizes = {
        "font.size": 12,
        "axes.titlesize": 13,
        "axes.labelsize": 12,
        "xtick.labelsize": 11,
        "ytick.labelsize": 11,
        "legend.fontsize": 10,
    }
    with matplotlib.rc_context(sizes):
        sweep = [r for r in rows if r["name"].startswith("sweep") and r["status"] == "ok"]
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 7), layout="constrained")
        series: dict[tuple, list[dict]] = {}
        for r in sweep:
            key = (r["instantiation"], r["impl"], r["dtype"], r["backward"])
            series.setdefault(key, []).append(r)
        insts = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")
        colours = dict(zip(insts, "bgrm"))
        for (inst, impl, dtype, bwd), rs in sorted(series.items()):
            rs.sort(key=lambda r: r["N"])
            label = f"{inst} {impl} {dtype}{' fwd+bwd' if bwd else ''}"
            style = {
                "color": colours[inst],
                "linestyle": "-" if impl == "ours" else "--",
                "marker": "s" if bwd else "o",
                "alpha": 0.6 if dtype == "bfloat16" else 1.0,
            }
            ns = [r["N"] for r in rs]
            ax_t.plot(ns, [r["time_ms"] for r in rs], label=label, **style)
            ax_m.plot(ns, [max(r["peak_mib"], 1e-3) for r in rs], **style)
        ns = sorted({r["N"] for r in sweep})
        if ns:
            ax_m.plot(ns, [n * n * 4 / MIB for n in ns], ":", color="black", label="N x N' float32")
        for ax, title in ((ax_t, "time (ms, median)"), (ax_m, "peak memory (MiB)")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("N (= N')")
            ax.set_title(f"{title}: ours solid, naive dashed")
            ax.grid(True, which="both", alpha=0.3)
        # Below the panels: one entry per series would cover the lines inside them.
        handles = ax_t.get_legend_handles_labels()[0] + ax_m.get_legend_handles_labels()[0]
        if handles:
            fig.legend(handles=handles, loc="outside lower center", ncol=3)
        fig.savefig(path, dpi=120)
        plt.close(fig)


# Command line ------------------------------------------------------------------------------

DTYPES = ("float32", "bfloat16")  # what run_case measures (bfloat16: autocast)
DEVICE_TYPES = ("cpu", "cuda")  # what the timing and memory code knows


def _dtypes(text: str) -> str:
    """``--dtypes``: a comma-separated subset of `DTYPES`, returned normalised.

    Example:
        >>> _dtypes("bfloat16, float32")
        'bfloat16,float32'
        >>> _dtypes("float7")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: 'float7' has unsupported dtype(s) ['float7']: expected a comma-separated subset of float32, bfloat16
    """  # noqa: E501
    names = [name.strip() for name in text.split(",")]
    expected = f"expected a comma-separated subset of {', '.join(DTYPES)}"
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty entry: {expected}")
    unknown = [name for name in names if name not in DTYPES]
    if unknown:
        raise argparse.ArgumentTypeError(f"{text!r} has unsupported dtype(s) {unknown}: {expected}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} names a dtype twice: {expected}")
    return ",".join(names)


def _device(text: str) -> str:
    """``--device``: ``cpu`` or ``cuda`` (a torch device string without an index).

    Example:
        >>> _device("cpu")
        'cpu'
        >>> _device("cuda:1")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: 'cuda:1' has a device index: expected cpu or cuda (pick the GPU with CUDA_VISIBLE_DEVICES)
    """  # noqa: E501
    expected = f"expected {' or '.join(DEVICE_TYPES)}"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a torch device ({exc}): {expected}"
        ) from None
    if device.type not in DEVICE_TYPES:
        raise argparse.ArgumentTypeError(f"{text!r} is a {device.type} device: {expected}")
    if device.index is not None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has a device index: {expected} (pick the GPU with CUDA_VISIBLE_DEVICES)"
        )
    return device.type


def _threads(text: str) -> int:
    """``--threads``: an integer from 1 to the machine's CPU count.

    Example:
        >>> _threads("1")
        1
        >>> _threads("-3")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: '-3' is not a thread count: expected an integer from 1 to ...
    """
    return count(text, os.cpu_count() or 1, "thread count", " (this machine's CPU count)")


def count(text: str, most: int, what: str, note: str = "") -> int:
    """An argparse value that must be an integer from 1 to `most`; `what` names it.

    Example:
        >>> count("0", 1000, "round count")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: '0' is not a round count: expected an integer from 1 to 1000
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= most:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a {what}: expected an integer from 1 to {most}{note}"
        )
    return value


def _limit_gib(text: str) -> float:
    """``--naive-limit-gib``: a finite positive number of GiB.

    Example:
        >>> _limit_gib("2.5")
        2.5
        >>> _limit_gib("nan")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: 'nan' is not a memory limit: expected a finite number of GiB > 0
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a memory limit: expected a finite number of GiB > 0"
        )
    return value


def use_device_and_threads(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What parsing alone cannot check: ``--device cuda`` needs a GPU (a usage error
    otherwise); then ``--threads`` is applied to torch."""
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"argument --device: 'cuda' is not available (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda}): expected cpu, or a machine with a GPU"
        )
    if args.threads:
        torch.set_num_threads(args.threads)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the JSON document it writes.

    Every option is checked before anything runs: a bad value is a usage error (exit status
    2) naming the option, the value and what it accepts.

    Example (the usage error goes to stderr: ``argument --dtypes: 'float7' has unsupported
    dtype(s) ['float7']: expected a comma-separated subset of float32, bfloat16``):
        >>> main(["--dtypes", "float7"])
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """
    parser = argparse.ArgumentParser(prog="python -m nonlocal_torch.bench", description=__doc__)
    parser.add_argument("--mode", choices=("smoke", "full"), default="smoke")
    parser.add_argument(
        "--device",
        type=_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda",
    )
    parser.add_argument(
        "--out",
        type=output_folder("a folder for bench.json, bench.md and bench.png (created if missing)"),
        default="benchmarks/results",
        help="folder for JSON and PNG",
    )
    parser.add_argument(
        "--dtypes", type=_dtypes, default=",".join(DTYPES), help=f"subset of {','.join(DTYPES)}"
    )
    parser.add_argument("--naive-limit-gib", type=_limit_gib, default=None)
    parser.add_argument("--threads", type=_threads, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    use_device_and_threads(parser, args)
    smoke = args.mode == "smoke"
    if smoke:
        cases = sweep_cases([4, 8], 8, False) + sweep_cases([8], 8, True)
        warmup, repeats = 1, 2
    elif args.device == "cuda":
        cases = anchor_cases() + sweep_cases([32, 64, 128, 256], 256, False)
        warmup, repeats = 5, 20
    else:
        cases = sweep_cases([16, 32, 64, 128], 64, False) + sweep_cases([16, 32, 64], 64, True)
        warmup, repeats = 1, 5
    limit = args.naive_limit_gib or (40.0 if args.device == "cuda" else 4.0)
    rows = []
    for dtype in args.dtypes.split(","):
        for case in cases:
            for impl in IMPLS:
                row = run_case(case, impl, dtype, args.device, warmup, repeats, limit)
                rows.append(row)
                print(
                    f"{case.name:28s} {case.instantiation:18s} {impl:5s} {dtype:8s} "
                    f"{'fwd+bwd' if case.backward else 'fwd':7s} "
                    f"{row['time_ms']} ms {row['peak_mib']} MiB {row['status']}",
                    flush=True,
                )
    doc = {
        "mode": args.mode,
        "device": args.device,
        "device_name": torch.cuda.get_device_name()
        if args.device == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(doc, indent=1))
    (out / "bench.md").write_text(table(rows) + "\n")
    plot(rows, out / "bench.png")
    print(table(rows))
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")
    if args.mode == "full" and args.device == "cuda":
        # The published formulations side by side (sidebyside.md/.json into the same folder).
        from . import sidebyside

        limit = ["--limit-gib", str(args.naive_limit_gib)] if args.naive_limit_gib else []
        sidebyside.main(["--device", "cuda", "--out", str(out), *limit])
    return doc


if __name__ == "__main__":
    main()
