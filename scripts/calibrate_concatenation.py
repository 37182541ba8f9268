"""Calibrate the concatenation's cost model: where the sorted strategy beats the pairwise one.

Times `sorted` against `pairwise` (the pairwise step alone, `nonlocal_torch.functional.attend`)
over a grid of query counts N, key counts N' and widths C', interleaved in one process
(alternating order, medians), for inference (forward under no_grad) and for training
(forward + backward), then fits

    log(t_sorted / t_pairwise) ~ c0 + c1 log(N N') + c2 log C' + c3 log N'

by least squares, separately for the two, and prints the table, the fitted coefficients (to
put in `nonlocal_torch.strategies.CONCAT_MODEL`) and, for the current and the fitted
model, how many grid points each picks wrongly and the worst slowdown of a wrong pick.

    OMP_WAIT_POLICY=PASSIVE python scripts/calibrate_concatenation.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from nonlocal_core import NonLocalConfig
from nonlocal_torch.functional import attend
from nonlocal_torch.strategies import choose_strategy

GRID_NM = [(196, 49), (196, 196), (784, 196), (784, 784), (1024, 256), (2304, 576), (3136, 784)]
GRID_NM += [(4096, 1024)]
WIDTHS = [32, 64, 128, 256, 512]


def ratio(n: int, m: int, width: int, training: bool, batch: int, rounds: int) -> float:
    """Median time of sorted over median time of pairwise for one grid point."""
    config = NonLocalConfig(4, instantiation="concatenation")
    gen = torch.Generator().manual_seed(0)
    theta, phi, g = (torch.randn(batch, k, width, generator=gen) for k in (n, m, m))
    w_f = torch.randn(2 * width, generator=gen)
    for t in (theta, phi, g, w_f):
        t.requires_grad_(training)
    times: dict[str, list[float]] = {"sorted": [], "pairwise": []}

    def step(strategy: str) -> None:
        if training:
            y, _ = attend(theta, phi, g, config, w_f, None, False, strategy)
            y.sum().backward()
        else:
            with torch.no_grad():
                attend(theta, phi, g, config, w_f, None, False, strategy)

    for strategy in times:  # warm-up
        step(strategy)
    for r in range(rounds):
        for strategy in list(times) if r % 2 == 0 else list(times)[::-1]:
            start = time.perf_counter()
            step(strategy)
            times[strategy].append(time.perf_counter() - start)
    return statistics.median(times["sorted"]) / statistics.median(times["pairwise"])


def features(n, m, width) -> np.ndarray:
    """The regressors of the model: 1, log(N N'), log C', log N'."""
    n, m, width = (np.asarray(v, dtype=np.float64) for v in (n, m, width))
    return np.stack([np.ones_like(n), np.log(n * m), np.log(width), np.log(m)], axis=-1)


def picks_report(points, ratios, pick) -> str:
    """How many points `pick` gets wrong and the worst slowdown a wrong pick costs."""
    wrong, worst = 0, 1.0
    for (n, m, width), r in zip(points, ratios):
        best = "sorted" if r < 1 else "pairwise"
        if pick(n, m, width) != best:
            wrong += 1
            worst = max(worst, 1 / r if best == "sorted" else r)
    return f"{wrong} of {len(points)} wrong, worst slowdown {worst:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    points = [(n, m, w) for n, m in GRID_NM for w in WIDTHS]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, B = {args.batch}")
    print("| N | N' | C' | sorted / pairwise, inference | training |\n|---|---|---|---|---|")
    measured = {False: [], True: []}
    for n, m, width in points:
        for training in (False, True):
            measured[training].append(ratio(n, m, width, training, args.batch, args.rounds))
        print(f"| {n} | {m} | {width} | {measured[False][-1]:.2f} | {measured[True][-1]:.2f} |")
    x = features(*zip(*points))
    for training in (False, True):
        y = np.log(measured[training])
        coef = np.linalg.lstsq(x, y, rcond=None)[0]
        name = "training" if training else "inference"
        print(f"\n{name}: coefficients {tuple(round(float(c), 3) for c in coef)}")

        def fitted(n, m, width, coef=coef):
            return "sorted" if features(n, m, width) @ coef < 0 else "pairwise"

        def current(n, m, width, training=training):
            return choose_strategy("concatenation", n, m, width, width, training=training)

        print(f"  current model: {picks_report(points, measured[training], current)}")
        print(f"  fitted model:  {picks_report(points, measured[training], fitted)}")


if __name__ == "__main__":
    main()
