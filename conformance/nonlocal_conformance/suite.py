"""What a conformance test works with: the adapter under test, its options, and comparisons.

The plugin makes one `Suite` per run (fixture ``conformance_suite``). Tests ask it to skip
undeclared features (`require`), to draw cases (`cases`), to run the adapter (`build`,
`forward`) and the reference with its rounding bound (`reference`), and to compare
(`assert_within`).

Example:
    >>> import numpy as np
    >>> assert_within(np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-9]), np.full(2, 1e-8), "z")
    >>> assert_within(np.array([1.0]), np.array([1.5]), np.array([0.1]), "z")
    Traceback (most recent call last):
    ...
    AssertionError: z: 1 of 1 entries differ from the float64 reference by more than ...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given

from .adapter import Adapter, Output
from .dtypes import Precision
from .strategies import Case, cases, examples_for, paper_cases
from .trace import SAFETY, Trace, trace_forward

__all__ = ["SAFETY", "Suite", "assert_within"]


def assert_within(actual, expected, bound, what: str) -> None:
    """Fail unless ``|actual - expected| <= bound`` everywhere (shapes equal, no NaN).

    See the module docstring for an example.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape}, expected {expected.shape}")
    diff = np.abs(actual - expected)
    bad = ~(diff <= bound)  # NaN in actual counts as bad
    if not bad.any():
        return
    excess = np.where(bad, np.nan_to_num(diff / np.maximum(bound, 1e-300), nan=np.inf), -1)
    idx = np.unravel_index(int(np.argmax(excess)), actual.shape)
    b = np.broadcast_to(bound, actual.shape)[idx]
    raise AssertionError(
        f"{what}: {int(bad.sum())} of {bad.size} entries differ from the float64 reference by "
        f"more than the rounding bound; worst at {tuple(int(i) for i in idx)}: got "
        f"{actual[idx]!r}, reference {expected[idx]!r}, |diff| {diff[idx]:.3g} > bound "
        f"{b:.3g}"
    )


class Suite:
    """The implementation under test and the run's options (backend, dtype, device)."""

    def __init__(
        self,
        adapter: Adapter,
        backend: str,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        vectors_dir: Path | None = None,
    ):
        self.adapter, self.backend = adapter, backend
        self.dtype, self.device = dtype, device
        self.vectors_dir = vectors_dir
        declared = getattr(adapter, "precision", None)
        if callable(declared):
            self.precision = Precision(**declared(dtype, device))
        else:
            self.precision = Precision.default(dtype)

    @property
    def caps(self):
        """The adapter's declared `Capabilities`."""
        return self.adapter.capabilities

    def missing(self, config=None, **features: Any) -> list[str]:
        """Reasons this run cannot test `config` / `features` (dtype and device included)."""
        return self.caps.missing(config, dtype=self.dtype, device=self.device, **features)

    def require(self, config=None, **features: Any) -> None:
        """Skip the current test, with the reasons, unless everything named is declared."""
        reasons = self.missing(config, **features)
        if reasons:
            pytest.skip(f"backend {self.backend!r} does not declare: {'; '.join(reasons)}")

    def cases(self, **fixed: Any):
        """`strategies.cases` restricted to this adapter and dtype."""
        return cases(self.caps, self.dtype, **fixed)

    def examples(self, **fixed: Any) -> list[Case]:
        """The paper configurations this adapter supports matching `fixed` config fields."""
        keep = ("instantiation", "spatial_dims", "data_format")
        return examples_for(
            paper_cases(self.dtype), self.caps, **{k: v for k, v in fixed.items() if k in keep}
        )

    def check(self, strategy, body: Callable[[Case], None], examples: Sequence[Case] = ()) -> None:
        """Run `body` on the explicit `examples`, then on cases drawn from `strategy`."""
        test = given(case=strategy)(body)
        for case in examples:
            test = example(case=case)(test)
        test()

    def build(self, case: Case, weights: dict | None = None) -> Any:
        """The adapter's block for the case's config and (given or the case's) weights."""
        return self.adapter.build(
            case.config,
            case.weights if weights is None else weights,
            dtype=self.dtype,
            device=self.device,
        )

    def forward(self, case: Case, block: Any = None, **overrides: Any) -> Output:
        """The adapter's forward pass on the case (keyword overrides replace case inputs)."""
        block = self.build(case) if block is None else block
        kwargs = case.kwargs()
        kwargs.update(overrides)
        x = kwargs.pop("x", case.x)
        out = self.adapter.forward(block, x, **kwargs)
        if not isinstance(out, Output):
            raise AssertionError(
                f"adapter.forward returned {type(out).__name__}, expected adapter.Output"
            )
        return out

    def reference(self, case: Case, **overrides: Any) -> Trace:
        """The float64 reference on the same (rounded) inputs, with this run's error bounds."""
        kwargs = case.kwargs()
        kwargs.update(overrides)
        x = kwargs.pop("x", case.x)
        weights = kwargs.pop("weights", case.weights)
        return trace_forward(x, weights, case.config, precision=self.precision, **kwargs)

    def header(self) -> dict[str, Any]:
        """What the report header prints: backend, versions, device, dtype, precision."""
        return {
            "backend": self.backend,
            "adapter": f"{type(self.adapter).__module__}:{type(self.adapter).__qualname__}",
            "versions": dict(self.adapter.versions()),
            "device": self.device,
            "dtype": self.dtype,
            "precision": self.precision.describe(),
            "capabilities": self.caps.as_dict(),
        }
