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

An infinite bound (bfloat16 gradients: gamma_K is infinite) never excuses a non-finite value
where the reference is finite:

    >>> assert_within(np.array([np.inf]), np.array([1.0]), np.array([np.inf]), "dx")
    Traceback (most recent call last):
    ...
    AssertionError: dx: 1 of 1 entries differ from the float64 reference by more than ...
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, reject, settings
from hypothesis.errors import Unsatisfiable

from .adapter import Adapter, Output, Unsupported
from .dtypes import Precision
from .strategies import Case, cases, examples_for, paper_cases
from .trace import SAFETY, Trace, trace_forward

__all__ = ["SAFETY", "Suite", "Tally", "assert_within"]

# A check stops and is skipped after this many declined draws (times the profile's
# max_examples, at least 20) when not one example has run.
DECLINE_LIMIT_FACTOR = 2
_CONFIG_REPR = re.compile(r"\s*\(?NonLocalConfig\(.*\)\)?\s*$")


def decline_reason(exc: BaseException) -> str:
    """The reason of an `Unsupported`, as one line without the config it was raised for
    (declines are grouped by reason in the report).

    Example:
        >>> decline_reason(Unsupported("x cannot express this config: residual=False "
        ...                            "(NonLocalConfig(in_channels=4, ...))"))
        'x cannot express this config: residual=False'
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = _CONFIG_REPR.sub("", text)
    return text if len(text) <= 200 else text[:197] + "..."


@dataclasses.dataclass
class Tally:
    """What one check did: drawn examples run to the end (or to the first failure),
    declined draws by reason. Counting stops at the first failure: shrinking reruns
    variations of it, which are not new examples."""

    examples: int = 0
    declined: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    failed: bool = False

    @property
    def declined_total(self) -> int:
        """Declined draws, all reasons together."""
        return sum(self.declined.values())

    def reasons(self, limit: int = 3) -> str:
        """The most frequent decline reasons with their counts, for a skip message."""
        top = self.declined.most_common(limit)
        more = len(self.declined) - len(top)
        text = "; ".join(f"{reason} (x{count})" for reason, count in top)
        return text + (f"; and {more} more" if more > 0 else "")


def assert_within(actual, expected, bound, what: str) -> None:
    """Fail unless ``|actual - expected| <= bound`` everywhere (shapes equal, no NaN), and
    `actual` is finite wherever `expected` is (an infinite bound never excuses inf or NaN).

    See the module docstring for an example.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape}, expected {expected.shape}")
    with np.errstate(invalid="ignore"):
        diff = np.abs(actual - expected)
    bad = ~(diff <= bound)  # NaN in actual counts as bad
    bad |= np.isfinite(expected) & ~np.isfinite(actual)
    if not bad.any():
        return
    with np.errstate(invalid="ignore", divide="ignore"):  # inf / inf: the worst, below
        ratio = np.nan_to_num(diff / np.maximum(bound, 1e-300), nan=np.inf)
    excess = np.where(bad, ratio, -1)
    idx = np.unravel_index(int(np.argmax(excess)), actual.shape)
    b = np.broadcast_to(bound, actual.shape)[idx]
    raise AssertionError(
        f"{what}: {int(bad.sum())} of {bad.size} entries differ from the float64 reference by "
        f"more than the rounding bound; worst at {tuple(int(i) for i in idx)}: got "
        f"{float(actual[idx])!r}, reference {float(expected[idx])!r}, |diff| {diff[idx]:.3g} > "
        f"bound {b:.3g}"
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
        self.tally = Tally()
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
            self._skip(reasons)

    def cases(self, **fixed: Any):
        """`strategies.cases` restricted to this adapter and dtype; skips the test when a
        fixed feature (pooling, residual) is outside the declared capabilities."""
        caps = self.caps.for_instantiation(fixed.get("instantiation"))
        pooled, residual = fixed.get("pooled"), fixed.get("residual")
        if pooled is True and not {"default", "any"} & caps.windows:
            self._skip(["subsampling (windows) not supported"])
        if pooled is False and "none" not in caps.windows:
            self._skip(["blocks without subsampling (windows 'none') not supported"])
        if residual is not None and residual not in caps.residual:
            self._skip([f"residual={residual} not supported"])
        return cases(self.caps, self.dtype, **fixed)

    def _skip(self, reasons: list[str]) -> None:
        pytest.skip(f"backend {self.backend!r} does not declare: {'; '.join(reasons)}")

    def examples(self, **fixed: Any) -> list[Case]:
        """The paper configurations this adapter supports matching `fixed` config fields."""
        keep = ("instantiation", "spatial_dims", "data_format")
        return examples_for(
            paper_cases(self.dtype), self.caps, **{k: v for k, v in fixed.items() if k in keep}
        )

    def check(self, strategy, body: Callable[[Case], None], examples: Sequence[Case] = ()) -> None:
        """Run `body` on the explicit `examples`, then on cases drawn from `strategy`.

        A draw the adapter declines (`Unsupported`, raised anywhere in `body`) is counted in
        `tally` with its reason and replaced by another draw; a check whose every draw was
        declined is skipped with the reasons. A failure carries its case (one line) as the
        attribute ``conformance_case`` for the report.
        """
        tally = self.tally
        limit = max(20, DECLINE_LIMIT_FACTOR * settings.default.max_examples)
        explicit = {id(case) for case in examples}
        drawn = {"run": 0, "declined": 0}

        def run(case: Case) -> None:
            is_drawn = id(case) not in explicit
            try:
                body(case)
            except Unsupported as exc:
                if not tally.failed:
                    tally.declined[decline_reason(exc)] += 1
                drawn["declined"] += is_drawn
                if drawn["run"] == 0 and drawn["declined"] >= limit:
                    # Hypothesis passes a skip straight through: stop drawing.
                    pytest.skip(f"every draw was declined: {tally.reasons()}")
                reject()
            except Exception as exc:
                tally.failed = True
                try:
                    exc.conformance_case = repr(case)
                except AttributeError:  # an exception type without __dict__
                    pass
                raise
            drawn["run"] += is_drawn
            if not tally.failed:
                tally.examples += 1

        test = given(case=strategy)(run)
        for case in examples:
            test = example(case=case)(test)
        try:
            test()
        except (Unsatisfiable, pytest.skip.Exception):
            # Every drawn case was declined: a pass if explicit examples ran, else a skip.
            if tally.failed or not tally.declined:
                raise
        if tally.examples == 0 and tally.declined:
            pytest.skip(f"every draw was declined: {tally.reasons()}")

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
        """What the report header prints: backend, the adapter (class, name, options),
        versions, device, dtype, precision and capabilities."""
        options = getattr(self.adapter, "options", None)
        return {
            "backend": self.backend,
            "adapter": f"{type(self.adapter).__module__}:{type(self.adapter).__qualname__}",
            "adapter_name": str(getattr(self.adapter, "name", "")),
            "options": {
                str(k): str(v) for k, v in (options() if callable(options) else {}).items()
            },
            "versions": dict(self.adapter.versions()),
            "device": self.device,
            "dtype": self.dtype,
            "precision": self.precision.describe(),
            "capabilities": self.caps.as_dict(),
        }
