"""Does it work? A small CNN with and without a non-local block on a long-range task.

    python -m nonlocal_torch.demo --out build/demo    # the full run: about 4 minutes, one core
    python -m nonlocal_torch.demo --smoke             # CI: tiny, a few seconds, same outputs

The task ("colour match"): a 24x24 RGB image of noise holds two 2x2 coloured marks, one in
the 4 leftmost columns, one in the 4 rightmost, at random rows; the label says whether the
two colours (of 6) are the same. Both networks are residual CNNs of the same depth and
nearly the same parameter count - a stem, residual blocks, global average pooling and a
linear classifier, as in a ResNet - that differ in one block: the non-local network has a
`NonLocal2d` (embedded Gaussian, keys pooled 2x2) where the baseline has a small residual
bottleneck. The baseline's receptive field is 17 pixels wide, and no pixel of one mark is
closer than 17 columns to a pixel of the other, so each of its features sees at most one
mark, and its logit is a sum of a term for the left mark and a term for the right one; such
a sum cannot express "the colours are equal" (at best 65% on this data). The non-local
block can carry one mark's colour to the other. Both train on the same stream of batches
(fresh samples each step, a seeded generator), from seeded initialisations, with the same
optimiser and budget; a fixed test set measures them. Torch runs on one thread by default
(``--threads``): the numbers then do not depend on the machine's core count, and small
convolutions gain little from more threads - on a busy machine they lose several times over.

Writes into ``--out``: ``curves.png`` and ``curves.json`` (training loss and test accuracy
during training), ``attention.png`` (what the trained block attends to, for a few queries,
captured with `nonlocal_torch.capture_attention` and drawn with
`nonlocal_core.plotting.plot_attention`) and ``results.md`` (the table printed at the end).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nonlocal_core.cli import output_folder

from .attention import capture_attention
from .block import NonLocal2d

SIZE = 24  # image side, pixels
BAND = 4  # each mark lies within this many columns of its edge
MARK = 2  # marks are MARK x MARK pixels
NOISE = 0.1  # standard deviation of the background noise
PALETTE = np.array(
    [
        [0.9, 0.1, 0.1],  # red
        [0.1, 0.8, 0.1],  # green
        [0.2, 0.3, 0.95],  # blue
        [0.9, 0.85, 0.1],  # yellow
        [0.85, 0.1, 0.85],  # magenta
        [0.1, 0.85, 0.85],  # cyan
    ],
    dtype=np.float32,
)
WIDTH = 16  # channels of every stage
BOTTLENECK = 6  # inner width of the baseline's bottleneck: its parameters ~ the block's
MODELS = ("baseline", "non-local")
# Figures are 9 in wide: 1278 px, sharp at the docs' 1280 px page width, and small enough
# in inches that their fonts stay readable when the page scales them to its text column.
DPI = 142


@dataclasses.dataclass(frozen=True)
class Settings:
    """A run's budget: the same for both models.

    Example:
        >>> FULL.steps * FULL.batch  # images each model trains on
        64000
    """

    steps: int = 1000
    batch: int = 64
    lr: float = 2e-3
    test_size: int = 2000
    eval_every: int = 100


FULL = Settings()
SMOKE = Settings(steps=2, batch=8, test_size=16, eval_every=1)


# The task ----------------------------------------------------------------------------------------


def colour_match(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` images of the colour-match task: ``x`` (n, 3, SIZE, SIZE) float32, ``y`` (n,) int64
    (1: the two marks have the same colour, drawn with probability 1/2), and ``marks``
    (n, 2, 2): each mark's top-left (row, column), the left mark first.

    Example:
        >>> x, y, marks = colour_match(4, np.random.default_rng(0))
        >>> x.shape, y.tolist(), marks[0].tolist()
        ((4, 3, 24, 24), [1, 0, 1, 0], [[20, 2], [9, 20]])
        >>> def colour(image, row, col):  # a mark's mean RGB: its colour, plus noise
        ...     mark = image[:, row : row + MARK, col : col + MARK]
        ...     return mark.mean(axis=(1, 2), dtype=float).round(1)
        >>> colour(x[0], 20, 2).tolist(), colour(x[0], 9, 20).tolist()  # y = 1: both red
        ([0.9, 0.0, 0.1], [0.8, 0.1, 0.1])
    """
    x = rng.normal(0.0, NOISE, size=(n, 3, SIZE, SIZE)).astype(np.float32)
    y = rng.integers(0, 2, n)
    left = rng.integers(0, len(PALETTE), n)
    other = (left + rng.integers(1, len(PALETTE), n)) % len(PALETTE)  # any other colour
    right = np.where(y == 1, left, other)
    rows = rng.integers(0, SIZE - MARK + 1, (n, 2))
    cols = np.stack(
        [
            rng.integers(0, BAND - MARK + 1, n),
            SIZE - BAND + rng.integers(0, BAND - MARK + 1, n),
        ],
        axis=1,
    )
    marks = np.stack([rows, cols], axis=2)
    offsets = np.arange(MARK)
    for side, colours in enumerate((left, right)):
        # Fancy indexing paints every sample's MARK x MARK square at once.
        r = rows[:, side, None, None] + offsets[:, None]
        c = cols[:, side, None, None] + offsets[None, :]
        i = np.arange(n)[:, None, None]
        for channel in range(3):
            x[i, channel, r, c] += PALETTE[colours, channel][:, None, None]
    return x, y.astype(np.int64), marks


# The models --------------------------------------------------------------------------------------


class Residual(nn.Module):
    """Two 3x3 convolutions with BN and a skip connection (a ResNet basic block).

    Example:
        >>> Residual(8)(torch.randn(2, 8, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 convolutions, a BN and a skip: the baseline's stand-in for the
    non-local block, local (it widens the receptive field by 2) and about as large.

    Example:
        >>> Bottleneck(16, 6)(torch.randn(2, 16, 5, 5)).shape
        torch.Size([2, 16, 5, 5])
    """

    def __init__(self, channels: int, inner: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, inner, 1)
        self.conv = nn.Conv2d(inner, inner, 3, padding=1)
        self.expand = nn.Conv2d(inner, channels, 1)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn(self.expand(F.relu(self.conv(F.relu(self.reduce(x))))))


def build_model(kind: str) -> nn.Sequential:
    """The baseline or the non-local network; they differ only in the module ``middle``.

    Example:
        >>> [sum(p.numel() for p in build_model(k).parameters()) for k in MODELS]
        [15090, 15098]
        >>> build_model("non-local").middle
        NonLocal2d(...)
    """
    if kind not in MODELS:
        raise ValueError(f"kind is {kind!r}: expected one of {MODELS}")
    middle = NonLocal2d(WIDTH, subsample=True) if kind == "non-local" else None
    return nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(
                nn.Conv2d(3, WIDTH, 3, padding=1, bias=False), nn.BatchNorm2d(WIDTH), nn.ReLU()
            ),
            res1=Residual(WIDTH),
            middle=middle or Bottleneck(WIDTH, BOTTLENECK),
            res2=Residual(WIDTH),
            res3=Residual(WIDTH),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            head=nn.Linear(WIDTH, 2),
        )
    )


# Training ----------------------------------------------------------------------------------------


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, a line per tenth elsewhere
    (CI logs).

    Example:
        >>> import io
        >>> stream = io.StringIO()
        >>> bar = Progress("demo", 20, stream)
        >>> for step in range(1, 21):
        ...     bar.update(step, "loss 0.5")
        >>> print(stream.getvalue().splitlines()[-1])  # doctest: +ELLIPSIS
              demo [########################] 20/20 loss 0.5 0s
    """

    def __init__(self, label: str, total: int, stream: Any = None) -> None:
        self.label, self.total = label, total
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.start = time.perf_counter()
        self.shown = -1

    def update(self, done: int, note: str) -> None:
        tenth = done * 10 // self.total
        if not self.tty and tenth == self.shown and done != self.total:
            return
        self.shown = tenth
        filled = done * 24 // self.total
        bar = "#" * filled + "-" * (24 - filled)
        elapsed = time.perf_counter() - self.start
        line = f"{self.label:>10} [{bar}] {done}/{self.total} {note} {elapsed:.0f}s"
        end = "\n" if not self.tty or done == self.total else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """The share of `x` that `model` (in eval mode) labels as `y`."""
    model.eval()
    with torch.no_grad():
        hits = sum(
            int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
            for i in range(0, len(x), batch)
        )
    model.train()
    return hits / len(x)


def train(kind: str, settings: Settings, seed: int, test: tuple) -> tuple[nn.Module, dict]:
    """Train one model; returns it and its record (curves, accuracy, parameters, time).

    The batches come from a generator seeded with `seed` alone, so both models see the same
    samples in the same order; the weights start from ``torch.manual_seed(seed)``. `test`
    is ``(x, y)``, scored every ``settings.eval_every`` steps. The progress bar goes to stderr.

    Example:
        >>> x, y, _ = colour_match(8, np.random.default_rng(1))
        >>> model, record = train("non-local", SMOKE, 0, (torch.from_numpy(x), torch.from_numpy(y)))
        >>> record["step"], record["parameters"], model.training
        ([1, 2], 15098, False)
    """
    torch.manual_seed(seed)
    model = build_model(kind)
    data = np.random.default_rng([seed, 1])
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: 0.5 * (1 + math.cos(math.pi * step / settings.steps))
    )
    progress = Progress(kind, settings.steps)
    record: dict[str, Any] = {"step": [], "train_loss": [], "test_accuracy": []}
    losses: list[float] = []
    train_seconds = 0.0
    for step in range(1, settings.steps + 1):
        x, y, _ = colour_match(settings.batch, data)
        started = time.perf_counter()
        loss = F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        train_seconds += time.perf_counter() - started
        losses.append(loss.item())
        if step % settings.eval_every == 0 or step == settings.steps:
            record["step"].append(step)
            record["train_loss"].append(float(np.mean(losses)))  # since the last point
            record["test_accuracy"].append(_accuracy(model, *test))
            losses = []
        tested = f"{record['test_accuracy'][-1]:.3f}" if record["step"] else "-"
        progress.update(step, f"loss {loss.item():.3f} test {tested}")
    record.update(
        accuracy=record["test_accuracy"][-1],
        parameters=sum(p.numel() for p in model.parameters()),
        train_seconds=round(train_seconds, 2),
    )
    return model.eval(), record


# Results -----------------------------------------------------------------------------------------


def table(records: dict[str, dict]) -> str:
    """The results as a Markdown table, one row per model.

    Example:
        >>> print(table({"m": {"accuracy": 0.5, "parameters": 10, "train_seconds": 1.0}}))
        | model | test accuracy | parameters | training time (s) |
        |---|---|---|---|
        | m | 0.500 | 10 | 1.0 |
    """
    lines = ["| model | test accuracy | parameters | training time (s) |", "|---|---|---|---|"]
    for name, r in records.items():
        lines.append(
            f"| {name} | {r['accuracy']:.3f} | {r['parameters']} | {r['train_seconds']:.1f} |"
        )
    return "\n".join(lines)


def plot_curves(records: dict[str, dict], path: Path) -> None:
    """Training loss and test accuracy against steps, both models, in one PNG.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "curves.png"
        >>> record = {"step": [1, 2], "train_loss": [0.7, 0.6], "test_accuracy": [0.5, 0.6]}
        >>> plot_curves({"baseline": record}, path)
        >>> path.read_bytes()[1:4]
        b'PNG'
    """
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    with matplotlib.rc_context({"font.size": 14}):
        fig = Figure(figsize=(9, 3.6), layout="constrained")
        ax_loss, ax_acc = fig.subplots(1, 2)
        for (name, r), colour in zip(records.items(), ("tab:grey", "tab:red")):
            ax_loss.plot(r["step"], r["train_loss"], color=colour, label=name, lw=2)
            ax_acc.plot(r["step"], r["test_accuracy"], color=colour, label=name, lw=2)
        ax_acc.axhline(0.5, color="black", ls=":", lw=1, label="chance")
        ax_acc.axhline(0.65, color="tab:grey", ls="--", lw=1, label="best local model")
        ax_loss.set(xlabel="training step", ylabel="training loss")
        ax_acc.set(xlabel="training step", ylabel="test accuracy", ylim=(0.4, 1.05))
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
        ax_loss.legend()
        ax_acc.legend(fontsize=11, loc="upper right", ncol=2)
        fig.savefig(path, dpi=DPI)


def plot_attention_maps(model: nn.Module, test: tuple, marks: np.ndarray, path: Path) -> list:
    """What the trained block attends to: for the first test image with equal colours and the
    first with different ones (rows), the image, then the attention of a query on the left
    mark, on the right mark and on the centre, on one colour scale per row. Returns the
    queries drawn.

    Example:
        >>> import tempfile
        >>> x, y, marks = colour_match(4, np.random.default_rng(0))
        >>> test = (torch.from_numpy(x), torch.from_numpy(y))
        >>> path = Path(tempfile.mkdtemp()) / "attention.png"
        >>> queries = plot_attention_maps(build_model("non-local").eval(), test, marks, path)
        >>> [q["on"] for q in queries], path.is_file()
        (['left mark', 'right mark', 'centre', 'left mark', 'right mark', 'centre'], True)
    """
    import matplotlib
    from matplotlib.figure import Figure

    from nonlocal_core.plotting import attention_overlay, plot_attention

    labels = test[1].numpy()
    rows = [int(np.flatnonzero(labels == label)[0]) for label in (1, 0) if (labels == label).any()]
    x = test[0][rows]
    with capture_attention(model) as maps:
        predicted = model(x).argmax(1).tolist()
    attention = maps["middle"].float().numpy()  # (B, N, N'): N = 24*24 queries, N' = 12*12
    images = x.permute(0, 2, 3, 1).numpy()
    # imshow clips float RGB to [0, 1]; the noise goes below 0.
    pictures = (images - images.min()) / (images.max() - images.min())
    grids = {"key_grid": (SIZE // 2, SIZE // 2), "query_grid": (SIZE, SIZE)}  # keys pooled 2x2
    verdict = ("different", "same")
    queries = []
    with matplotlib.rc_context({"font.size": 13}):
        fig = Figure(figsize=(9, 2.5 * len(rows)), layout="constrained")
        axes = fig.subplots(len(rows), 4, squeeze=False)
        for i, b in enumerate(rows):
            axes[i, 0].imshow(pictures[i], interpolation="nearest")
            axes[i, 0].set(xticks=[], yticks=[], title=f"test image {b}")
            axes[i, 0].set_ylabel(
                f"{verdict[int(labels[b])]} colours\npredicted: {verdict[predicted[i]]}"
            )
            points = [tuple(int(p) for p in marks[b, 0]), tuple(int(p) for p in marks[b, 1])]
            points.append((SIZE // 2, SIZE // 2))
            top = max(
                np.nanmax(attention_overlay(attention[i], p, size=(SIZE, SIZE), **grids))
                for p in points
            )
            for ax, point, what in zip(axes[i, 1:], points, ("left mark", "right mark", "centre")):
                plot_attention(
                    attention[i], pictures[i], point, ax=ax, vmax=top, colorbar=False, **grids
                )
                ax.set_title(f"query: {what.removesuffix(' mark')}")
                queries.append({"test_image": b, "query": list(point), "on": what})
            fig.colorbar(axes[i, -1].images[-1], ax=axes[i, 1:], label="attention", shrink=0.9)
        fig.savefig(path, dpi=DPI)
    return queries


def main(argv: list[str] | None = None) -> dict:
    """Train both models, print the table, write the figures; returns the JSON document.

    Example (a usage error goes to stderr and exits with status 2):
        >>> main(["--steps", "0"])
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """
    parser = argparse.ArgumentParser(
        prog="python -m nonlocal_torch.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI (seconds)")
    parser.add_argument(
        "--out",
        type=output_folder("a folder for the figures and numbers (created if missing)"),
        default="build/demo",
        help="output folder (default build/demo)",
    )
    parser.add_argument("--steps", type=_steps, default=None, help="training steps per model")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and weights")
    parser.add_argument(
        "--threads", type=_threads, default=1, help="torch CPU threads (default 1, see above)"
    )
    args = parser.parse_args(argv)
    settings = SMOKE if args.smoke else FULL
    if args.steps is not None:
        settings = dataclasses.replace(settings, steps=args.steps)
    try:
        import matplotlib  # noqa: F401  (checked now, not after minutes of training)
    except ImportError:
        parser.error("the figures need matplotlib: pip install matplotlib")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, settings, argv)
    finally:
        torch.set_num_threads(threads)  # an in-process caller keeps its own setting


def _run(args: argparse.Namespace, settings: Settings, argv: list[str] | None) -> dict:
    started = time.perf_counter()
    x, y, marks = colour_match(settings.test_size, np.random.default_rng([args.seed, 2]))
    test = (torch.from_numpy(x), torch.from_numpy(y))
    trained, records = {}, {}
    for kind in MODELS:
        trained[kind], records[kind] = train(kind, settings, args.seed, test)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(records, out / "curves.png")
    queries = plot_attention_maps(trained["non-local"], test, marks, out / "attention.png")
    doc = {
        "command": " ".join(["python -m nonlocal_torch.demo", *(argv or sys.argv[1:])]),
        "settings": dataclasses.asdict(settings),
        "seed": args.seed,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "models": records,
        "attention_queries": queries,
    }
    (out / "curves.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "results.md").write_text(table(records) + "\n")
    print(table(records))
    print(
        f"wall time {doc['wall_seconds']} s; wrote curves.png, curves.json, attention.png, "
        f"results.md into {out}"
    )
    return doc


def _positive(what: str) -> Any:
    """An argparse type for a positive integer; `what` names it in the error."""

    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}: expected an integer >= 1")
        return value

    return check


_steps = _positive("a step count")
_threads = _positive("a thread count")


if __name__ == "__main__":
    main()
