"""Benchmarks of the Keras layer on each Keras backend: ``auto`` against the materialising form.

    python -m nonlocal_keras.bench --mode smoke                  # CI: tiny sizes, seconds
    python -m nonlocal_keras.bench --mode full --out DIR         # N up to 16384, 3 backends
    python -m nonlocal_keras.bench --backends jax --mode full    # one backend

Keras reads ``KERAS_BACKEND`` once per process, so each backend runs in a process of its
own. "naive" is the same layer with ``strategy="pairwise"``: the (B, N, N') matrix, as the
layer computed every instantiation but the dot product before this version.

Time is the median over repeats after a warm-up call (JAX: one jitted program per pass;
TensorFlow and PyTorch: eager), in a process with the defaults users run with. Peak memory
comes from a second process: the growth of its resident set during one call (after a
warm-up call) over what it held before (Linux's ``VmHWM``, reset through
``/proc/self/clear_refs``), so it counts every allocator: TensorFlow's, XLA's, PyTorch's.
That process fixes glibc's ``MALLOC_MMAP_THRESHOLD_`` at 64 KiB, so that every larger
buffer is mapped on allocation and unmapped on release (by default glibc raises the
threshold to 32 MiB after the first release and keeps such buffers in its heap, where the
measured call would silently reuse them), and sets ``TF_ENABLE_ONEDNN_OPTS=0`` (oneDNN's
kernels keep released buffers in a pool of their own, which would hide every peak after
the first call).
Prints tables, writes ``bench.json``, ``bench.md`` and a log-log plot ``bench.png`` into
``--out``. There are no timing assertions anywhere: numbers are for reading.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
from keras import ops

from nonlocal_core.cli import output_folder

from .layer import NonLocalBlock

MIB = 2**20
BACKENDS = ("tensorflow", "jax", "torch")
IMPLS = ("auto", "pairwise")
INSTANTIATIONS = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")


@dataclasses.dataclass(frozen=True)
class Case:
    """One shape: a (1, side, side, C) channels-last float32 input, keys not pooled."""

    instantiation: str
    side: int
    channels: int
    backward: bool

    @property
    def num_positions(self) -> int:
        return self.side * self.side

    def block(self, strategy: str) -> NonLocalBlock:
        """A built layer for this case (Keras's seed 0).

        Example:
            >>> Case("dot_product", 4, 8, False).block("auto").nonlocal_config.inter_channels
            4
        """
        keras.utils.set_random_seed(0)
        block = NonLocalBlock(
            self.channels,
            spatial_dims=2,
            instantiation=self.instantiation,
            data_format="channels_last",
            strategy=strategy,
        )
        block.build((None, self.side, self.side, self.channels))
        return block


def cases(sides: list[int], channels: int) -> list[Case]:
    """Every instantiation at every side, forward and forward+backward."""
    return [
        Case(inst, side, channels, backward)
        for backward in (False, True)
        for inst in INSTANTIATIONS
        for side in sides
    ]


def naive_bytes(case: Case) -> int:
    """What the materialising form's (N, N') float32 matrices need, about: three of them
    forward (logits, probabilities, a copy), five with the backward pass."""
    return case.num_positions**2 * 4 * (5 if case.backward else 3)


# Measuring -----------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        return int(re.search(rf"^{field}:\s+(\d+) kB", handle.read(), re.M).group(1))


def peak_rss_mib(fn: Callable[[], object]) -> float | None:
    """How far the resident set grew above its level before `fn()` while it ran (MiB), or
    None where Linux's peak counter cannot be reset.

    Example:
        >>> grew = peak_rss_mib(lambda: np.ones(64 * MIB // 8))  # 64 MiB, touched
        >>> grew is None or 60 < grew < 80
        True
    """
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current resident set
        before = _status_kib("VmRSS")
    except (OSError, AttributeError):
        return None
    fn()
    return max(0, _status_kib("VmHWM") - before) / 1024


def _time_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: compiles (JAX), traces kernels, fills caches
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def step_function(case: Case, block: NonLocalBlock, x) -> Callable[[], object]:
    """One call of the layer as this backend's users run it: inference, or the gradients of
    mean(z^2) with respect to x and every weight (training mode: BN batch statistics).

    Example:
        >>> case = Case("embedded_gaussian", 4, 8, True)
        >>> step = step_function(case, case.block("auto"), np.ones((1, 4, 4, 8), "float32"))
        >>> step() is None
        True
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        trainable = [v.value for v in block.trainable_variables]
        fixed = [v.value for v in block.non_trainable_variables]

        def loss(trainable, x):
            z, _ = block.stateless_call(trainable, fixed, x, training=case.backward)
            return ops.mean(ops.square(z))

        if case.backward:
            run = jax.jit(jax.grad(loss, argnums=(0, 1)))
        else:
            run = jax.jit(lambda t, x: block.stateless_call(t, fixed, x)[0])

        def jax_step():
            jax.block_until_ready(run(trainable, x))

        return jax_step
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)

        def tf_step():
            if not case.backward:
                block(x).numpy()
                return None
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = ops.mean(ops.square(block(x, training=True)))
            tape.gradient(loss, [x, *block.trainable_variables])
            return None

        return tf_step
    import torch

    x = torch.as_tensor(x).requires_grad_(case.backward)

    def torch_step():
        with torch.set_grad_enabled(case.backward):
            z = block(x, training=case.backward)
        if case.backward:
            ops.mean(ops.square(z)).backward()
            x.grad = None
            for v in block.trainable_variables:
                v.value.grad = None
        return None

    return torch_step


def run_case(
    case: Case, impl: str, repeats: int, naive_limit_gib: float, measure: str = "both"
) -> dict:
    """One row: time_ms, extra_mib (each None unless `measure` asks for it: ``"time"``,
    ``"memory"`` or ``"both"``), the strategy that ran, and the status."""
    row = {**dataclasses.asdict(case), "impl": impl, "N": case.num_positions}
    row.update(backend=keras.backend.backend(), time_ms=None, extra_mib=None)
    if impl == "pairwise" and naive_bytes(case) > naive_limit_gib * 2**30:
        need = naive_bytes(case) / 2**30
        row["status"] = f"skipped: needs ~{need:.1f} GiB (limit {naive_limit_gib} GiB)"
        return row
    block = case.block(impl)
    x = np.random.default_rng(0).normal(size=(1, case.side, case.side, case.channels))
    step = step_function(case, block, x.astype("float32"))
    if measure in ("time", "both"):
        row["time_ms"] = round(_time_ms(step, repeats), 3)
    if measure in ("memory", "both"):
        step()  # warm-up: compiling and first-call caches are not the block's memory
        extra = peak_rss_mib(step)
        row["extra_mib"] = None if extra is None else round(extra, 1)
    row["strategy"] = _chosen(block, case) if impl == "auto" else impl
    row["status"] = "ok"
    return row


def _chosen(block: NonLocalBlock, case: Case) -> str:
    from .strategies import choose_strategy

    n = case.num_positions
    return choose_strategy(block.nonlocal_config, block.compute_dtype, n, n)


# Reporting -----------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    """A Markdown table: one line per backend, case and pass, auto and naive side by side.

    Example:
        >>> print(table([]).splitlines()[0])
        | backend | instantiation | pass | N | auto runs | auto ms | auto MiB | naive ms | naive MiB |
    """  # noqa: E501
    columns = ["backend", "instantiation", "pass", "N", "auto runs"]
    columns += ["auto ms", "auto MiB", "naive ms", "naive MiB"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    keyed: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        key = (r["backend"], r["instantiation"], r["backward"], r["N"])
        keyed.setdefault(key, {})[r["impl"]] = r

    def cell(r: dict | None, field: str) -> str:
        if r is None or r["status"] != "ok":
            return "-" if r is None else "skip"
        return "n/a" if r[field] is None else f"{r[field]:.3g}"

    for (backend, inst, bwd, n), impls in keyed.items():
        auto, naive = impls.get("auto"), impls.get("pairwise")
        chosen = (auto or {}).get("strategy", "-")
        lines.append(
            f"| {backend} | {inst} | {'fwd+bwd' if bwd else 'fwd'} | {n} | {chosen} | "
            f"{cell(auto, 'time_ms')} | {cell(auto, 'extra_mib')} | "
            f"{cell(naive, 'time_ms')} | {cell(naive, 'extra_mib')} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Log-log peak memory and time against N: one column per backend, auto solid, naive
    dashed, and the size of one N x N float32 matrix for scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    backends = [b for b in BACKENDS if any(r["backend"] == b for r in ok)] or ["none"]
    sizes = {"font.size": 12, "axes.titlesize": 13, "legend.fontsize": 10}
    colours = dict(zip(INSTANTIATIONS, ("tab:blue", "tab:green", "tab:red", "tab:purple")))
    with matplotlib.rc_context(sizes):
        fig, axes = plt.subplots(
            2,
            len(backends),
            figsize=(4.5 * len(backends) + 1, 8),
            squeeze=False,
            layout="constrained",
        )
        for col, backend in enumerate(backends):
            mem, tim = axes[0][col], axes[1][col]
            series: dict[tuple, list[dict]] = {}
            for r in ok:
                if r["backend"] == backend:
                    series.setdefault((r["instantiation"], r["impl"], r["backward"]), []).append(r)
            for (inst, impl, bwd), rs in sorted(series.items()):
                rs.sort(key=lambda r: r["N"])
                style = {
                    "color": colours[inst],
                    "linestyle": "-" if impl == "auto" else "--",
                    "marker": "s" if bwd else "o",
                }
                label = f"{inst}{' fwd+bwd' if bwd else ''}"
                ns = [r["N"] for r in rs]
                mem.plot(ns, [max(r["extra_mib"] or 0, 0.1) for r in rs], label=label, **style)
                tim.plot(ns, [r["time_ms"] for r in rs], **style)
            ns = sorted({r["N"] for r in ok})
            if ns:
                mem.plot(ns, [n * n * 4 / MIB for n in ns], ":", color="black", label="N x N f32")
            mem.set_title(f"{backend}: extra peak memory (MiB)")
            tim.set_title(f"{backend}: time (ms, median)")
            for ax in (mem, tim):
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_xlabel("N (= N')")
                ax.grid(True, which="both", alpha=0.3)
        handles, labels = axes[0][0].get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        fig.legend(unique.values(), unique.keys(), loc="outside lower center", ncol=5)
        fig.suptitle("nonlocal_keras: auto (solid) against the pairwise matrix (dashed)")
        fig.savefig(path, dpi=110)
        plt.close(fig)


# Command line ------------------------------------------------------------------------------


def _backends(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in BACKENDS]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"{text!r} is invalid: expected a comma-separated subset of {','.join(BACKENDS)} "
            "without repeats"
        )
    return names


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: expected a number > 0")
    return value


def _measure_here(mode: str, naive_limit_gib: float, measure: str = "both") -> list[dict]:
    if mode == "smoke":
        todo, repeats = cases([4], 8), 1
    else:
        todo, repeats = cases([32, 64, 128], 64), 3
    rows = []
    for case in todo:
        for impl in IMPLS:
            # One timed call at the largest size: each takes seconds there on a CPU.
            times = 1 if case.num_positions > 4096 else repeats
            row = run_case(case, impl, times, naive_limit_gib, measure)
            rows.append(row)
            print(
                f"{row['backend']:10s} {case.instantiation:18s} N={case.num_positions:<6d} "
                f"{'fwd+bwd' if case.backward else 'fwd':7s} {impl:8s} {row['time_ms']} ms "
                f"+{row['extra_mib']} MiB {row['status']}",
                file=sys.stderr,
                flush=True,
            )
    return rows


# The memory-measuring process: glibc maps every buffer above 64 KiB afresh, and TensorFlow's
# oneDNN pool is off (see the module docstring). Times come from a process with the
# defaults users run with.
MEMORY_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "65536",
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "TF_CPP_MIN_LOG_LEVEL": "3",
}
TIME_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3"}


def _measure_elsewhere(backend: str, mode: str, naive_limit_gib: float) -> list[dict]:
    """Times from one process, peak memory from another, on `backend`: one row per case."""
    results = {}
    for measure, settings in (("time", TIME_ENV), ("memory", MEMORY_ENV)):
        with tempfile.TemporaryDirectory() as tmp:
            command = [sys.executable, "-m", "nonlocal_keras.bench", "--worker", measure]
            command += ["--out", tmp, "--mode", mode, "--naive-limit-gib", str(naive_limit_gib)]
            env = {**os.environ, **settings, "KERAS_BACKEND": backend}
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
            results[measure] = json.loads((Path(tmp) / "bench.json").read_text())["rows"]
    for row, memory in zip(results["time"], results["memory"]):
        row["extra_mib"] = memory["extra_mib"]
    return results["time"]


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the JSON document it writes.

    Example (the usage error goes to stderr):
        >>> main(["--backends", "tensorflow,cntk"])
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """
    parser = argparse.ArgumentParser(prog="python -m nonlocal_keras.bench", description=__doc__)
    parser.add_argument("--mode", choices=("smoke", "full"), default="smoke")
    parser.add_argument(
        "--backends", type=_backends, default=list(BACKENDS), help=",".join(BACKENDS)
    )
    parser.add_argument(
        "--out",
        type=output_folder("a folder for bench.json, bench.md and bench.png (created if missing)"),
        default="benchmarks/results-keras",
    )
    parser.add_argument("--naive-limit-gib", type=_positive, default=6.0)
    # Internal: measure time or memory in this process, on its Keras backend.
    parser.add_argument("--worker", choices=("time", "memory"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        rows = _measure_here(args.mode, args.naive_limit_gib, args.worker)
    else:
        rows = [
            r for b in args.backends for r in _measure_elsewhere(b, args.mode, args.naive_limit_gib)
        ]
    doc = {
        "mode": args.mode,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "keras": keras.__version__,
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(doc, indent=1))
    if args.worker:  # half of the measurements: the parent reports them
        return doc
    (out / "bench.md").write_text(table(rows) + "\n")
    print(table(rows))
    try:
        plot(rows, out / "bench.png")
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
    return doc


if __name__ == "__main__":
    main()
