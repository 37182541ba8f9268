"""The ``numpy`` backend: the float64 reference behind the adapter protocol.

It checks the suite against the reference itself (and the reference against the golden
vectors). Inputs arrive already rounded to the dtype under test; the block computes in
float64 and rounds its results to that dtype, like an implementation whose only rounding is
the final store.

Example:
    >>> import numpy as np
    >>> from nonlocal_core import NonLocalConfig, init_weights
    >>> adapter = NumpyAdapter()
    >>> cfg = NonLocalConfig(4, spatial_dims=1)
    >>> block = adapter.build(cfg, init_weights(cfg), dtype="float32", device="cpu")
    >>> x = np.ones((1, 4, 3), dtype=np.float32)
    >>> out = adapter.forward(block, x)
    >>> out.dtype, bool((out.z == x).all())
    ('float32', True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

import nonlocal_core
from nonlocal_core import NonLocalConfig, check_weights, nonlocal_forward
from nonlocal_core.config import require_config, require_flag

from .adapter import ALL_DTYPES, Capabilities, Output
from .backward import NOT_TRAINABLE, reference_gradients
from .dtypes import cast


@dataclasses.dataclass
class NumpyBlock:
    """A config, its canonical weights (as given, in the carrier of `dtype`) and the dtype."""

    config: NonLocalConfig
    weights: dict[str, np.ndarray]
    dtype: str


def require_floating(value: Any, name: str) -> None:
    """TypeError naming `name` and its dtype unless `value` is a floating-point array.

    Example:
        >>> require_floating(np.arange(3), "x")
        Traceback (most recent call last):
        ...
        TypeError: x has dtype int64: expected a floating-point array; convert it first, ...
    """
    dtype = np.asarray(value).dtype
    if not np.issubdtype(dtype, np.floating):
        raise TypeError(
            f"{name} has dtype {dtype}: expected a floating-point array; convert it first, e.g. "
            f"{name}.astype(np.float32) (spec IO-3: integer and bool inputs are never cast "
            f"silently)"
        )


class NumpyAdapter:
    """`nonlocal_conformance.adapter.Adapter` for the NumPy reference (every feature, on CPU).

    See the module docstring for an example.
    """

    name = "numpy"
    capabilities = Capabilities(dtypes=frozenset(ALL_DTYPES), gradients=True)

    def versions(self) -> dict[str, str]:
        """NumPy and nonlocal_core versions."""
        return {"numpy": np.__version__, "nonlocal_core": nonlocal_core.__version__}

    def precision(self, dtype: str, device: str) -> dict[str, str]:
        """Sums run in float64; only results are rounded to `dtype`."""
        return {"storage": dtype, "matmul_inputs": dtype, "accumulation": "float64"}

    def build(
        self, config: NonLocalConfig, weights: Mapping[str, np.ndarray], *, dtype: str, device: str
    ) -> NumpyBlock:
        """Check the weights against `config` and keep copies."""
        require_config(config)
        check_weights(weights, config)
        return NumpyBlock(config, {k: np.array(v, copy=True) for k, v in weights.items()}, dtype)

    def forward(
        self,
        block: NumpyBlock,
        x: np.ndarray,
        *,
        context: np.ndarray | None = None,
        key_mask: np.ndarray | None = None,
        training: bool = False,
        return_attention: bool = False,
    ) -> Output:
        """``nonlocal_forward`` in float64, results rounded to the block's dtype.

        Integer and bool inputs are refused here, as every backend must (spec IO-3), although
        the reference function itself reads real integers exactly as float64.
        """
        return_attention = require_flag(return_attention, "return_attention")
        require_floating(x, "x")
        if context is not None:
            require_floating(context, "context")
        z, attention = nonlocal_forward(
            x,
            block.weights,
            block.config,
            context=context,
            key_mask=key_mask,
            training=training,
            return_attention=True,
        )
        return Output(
            z=cast(z, block.dtype),
            dtype=block.dtype,
            attention=cast(attention, block.dtype) if return_attention else None,
        )

    def export_weights(self, block: NumpyBlock) -> dict[str, np.ndarray]:
        """The stored weights, unchanged."""
        return {k: v.copy() for k, v in block.weights.items()}

    def gradients(
        self,
        block: NumpyBlock,
        x: np.ndarray,
        cotangent: np.ndarray,
        *,
        context: np.ndarray | None = None,
        key_mask: np.ndarray | None = None,
        training: bool = False,
    ) -> dict[str, Any]:
        """The analytic float64 backward (`nonlocal_conformance.backward`), rounded to dtype."""
        grads = reference_gradients(
            x,
            block.weights,
            block.config,
            cotangent,
            context=context,
            key_mask=key_mask,
            training=training,
        )
        return {k: cast(v, block.dtype) for k, v in grads.items() if k not in NOT_TRAINABLE}
