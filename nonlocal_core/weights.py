"""Canonical weight tensors: names, shapes, initialisation and validation.

The canonical layout (spec section "Weights") is framework-neutral: a 1x1 projection from
``a`` to ``b`` channels is a ``(b, a)`` matrix acting on channel vectors, so
``theta_i = theta.weight @ x_i + theta.bias``. Backends convert to and from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .config import NonLocalConfig, require_config

Weights = dict[str, np.ndarray]


class WeightError(ValueError):
    """A weight dict does not match what the config needs."""


def weight_shapes(config: NonLocalConfig) -> dict[str, tuple[int, ...]]:
    """The canonical name and shape of every tensor `config` needs - exactly those.

    Example:
        >>> from nonlocal_core import NonLocalConfig
        >>> weight_shapes(NonLocalConfig(8, instantiation="gaussian", norm=None))
        {'g.weight': (4, 8), 'g.bias': (4,), 'out.weight': (8, 4), 'out.bias': (8,)}
    """
    require_config(config)
    c, ci, cc = config.in_channels, config.inter_channels, config.context_channels
    shapes: dict[str, tuple[int, ...]] = {}
    if config.instantiation != "gaussian":
        shapes["theta.weight"] = (ci, c)
        shapes["theta.bias"] = (ci,)
        shapes["phi.weight"] = (ci, cc)
        shapes["phi.bias"] = (ci,)
    shapes["g.weight"] = (ci, cc)
    shapes["g.bias"] = (ci,)
    if config.instantiation == "concatenation":
        shapes["concat.weight"] = (2 * ci,)
    shapes["out.weight"] = (c, ci)
    shapes["out.bias"] = (c,)
    if config.norm == "batch":
        for name in ("gamma", "beta", "running_mean", "running_var"):
            shapes[f"norm.{name}"] = (c,)
    return shapes


def init_weights(config: NonLocalConfig, seed: int | None = 0) -> Weights:
    """The spec's initialisation, in float64: a block built from it is the identity.

    Projection weights (theta, phi, g, and W_z when a norm follows) and ``concat.weight`` are
    drawn from N(0, 0.01^2); biases are 0; BN starts at gamma = beta = 0 with running
    statistics (0, 1). Without a norm, W_z is all zeros instead, so z = x either way.

    Example:
        >>> from nonlocal_core import NonLocalConfig
        >>> w = init_weights(NonLocalConfig(8), seed=1)
        >>> float(abs(w["theta.weight"]).max()) < 0.1, float(w["norm.gamma"].sum())
        (True, 0.0)
    """
    rng = np.random.default_rng(seed)
    out: Weights = {}
    for name, shape in weight_shapes(config).items():
        if name == "norm.running_var":
            out[name] = np.ones(shape)
        elif name.endswith(".weight") and not (name == "out.weight" and config.norm is None):
            out[name] = rng.normal(0.0, 0.01, size=shape)
        else:
            out[name] = np.zeros(shape)
    return out


def random_weights(config: NonLocalConfig, seed: int | None = 0, scale: float = 0.5) -> Weights:
    """Weights with every tensor random (BN included), for tests: the block is far from identity.

    Matrices are scaled by ``scale / sqrt(fan_in)`` so activations stay O(1) whatever the
    widths; ``norm.running_var`` lies in [0.5, 1.5].

    Example:
        >>> from nonlocal_core import NonLocalConfig
        >>> sorted(random_weights(NonLocalConfig(4, norm=None), seed=3))[:2]
        ['g.bias', 'g.weight']
    """
    rng = np.random.default_rng(seed)
    out: Weights = {}
    for name, shape in weight_shapes(config).items():
        if name == "norm.running_var":
            out[name] = rng.uniform(0.5, 1.5, size=shape)
        elif len(shape) == 2:
            out[name] = rng.normal(0.0, scale / np.sqrt(shape[1]), size=shape)
        elif name == "concat.weight":
            out[name] = rng.normal(0.0, scale / np.sqrt(shape[0] / 2), size=shape)
        elif name == "norm.gamma":
            out[name] = rng.uniform(0.5, 1.5, size=shape) * rng.choice([-1.0, 1.0], size=shape)
        else:
            out[name] = rng.normal(0.0, scale, size=shape)
    return out


def check_weights(weights: Mapping[str, np.ndarray], config: NonLocalConfig) -> None:
    """Raise `WeightError` naming the first missing, extra or mis-shaped tensor.

    Example:
        >>> from nonlocal_core import NonLocalConfig
        >>> cfg = NonLocalConfig(4, norm=None, instantiation="gaussian")
        >>> check_weights({}, cfg)
        Traceback (most recent call last):
        ...
        nonlocal_core.weights.WeightError: missing weight(s) ['g.bias', 'g.weight', 'out.bias', 'out.weight'] ...
    """  # noqa: E501
    if not isinstance(weights, Mapping):
        raise TypeError(
            f"weights must be a mapping from canonical name to array, got {type(weights).__name__}"
        )
    expected = weight_shapes(config)
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing:
        raise WeightError(
            f"missing weight(s) {missing} for {config.instantiation} (norm={config.norm!r}); "
            f"expected exactly {sorted(expected)}"
        )
    if extra:
        raise WeightError(
            f"unexpected weight(s) {extra} for {config.instantiation} (norm={config.norm!r}); "
            f"expected exactly {sorted(expected)}"
        )
    for name, shape in expected.items():
        array = _as_array(weights[name], name)
        if array.shape != shape:
            raise WeightError(f"weight {name!r} has shape {array.shape}, expected {shape}")
        if not is_real_dtype(array.dtype):
            raise WeightError(
                f"weight {name!r} has dtype {array.dtype}: expected a real (float or int) array"
            )
        # NaN passes (spec IO-4: non-finite values propagate); only a sure negative fails.
        if name == "norm.running_var" and np.any(array < 0):
            raise WeightError("weight 'norm.running_var' has negative entries: a variance is >= 0")


def fit_kernels(weights: Mapping[str, np.ndarray], config: NonLocalConfig) -> Weights:
    """`weights` as arrays, with 1x1 convolution kernels reshaped to the canonical shape.

    A projection stored as a conv kernel, ``(C', C, 1)``, ``(C', C, 1, 1)`` or
    ``(C', C, 1, 1, 1)``, and w_f stored as a linear or conv weight, ``(1, 2C')`` or
    ``(1, 2C', 1, 1)``, hold the same numbers in the same order as the canonical arrays
    (`is_kernel_of`): they are reshaped. Anything else is left for `check_weights` to report.

    Example:
        >>> from nonlocal_core import NonLocalConfig
        >>> cfg = NonLocalConfig(8, instantiation="gaussian", norm=None)
        >>> w = {"g.weight": np.zeros((4, 8, 1, 1)), "out.weight": np.zeros((8, 4, 1, 1, 1))}
        >>> {name: a.shape for name, a in fit_kernels(w, cfg).items()}
        {'g.weight': (4, 8), 'out.weight': (8, 4)}
    """
    if not isinstance(weights, Mapping):
        return weights  # check_weights names the type
    shapes = weight_shapes(config)
    out: Weights = {}
    for name, value in weights.items():
        array = _as_array(value, name)
        expected = shapes.get(name)
        if expected is not None and is_kernel_of(name, array.shape, expected):
            array = array.reshape(expected)
        out[name] = array
    return out


def is_kernel_of(name: str, shape: tuple[int, ...], canonical: tuple[int, ...]) -> bool:
    """Whether `shape` is a framework's layout of the canonical weight `name`, of shape
    `canonical`, with the numbers in the same order: a projection matrix ``(b, a)`` as a
    1x1 conv kernel ``(b, a, 1, ...)``, w_f ``(2C',)`` as ``(1, 2C', 1, ...)``. Biases
    and norm vectors have no other layout.

    Example:
        >>> is_kernel_of("theta.weight", (4, 8, 1, 1), (4, 8))
        True
        >>> is_kernel_of("theta.weight", (8, 4, 1, 1), (4, 8)), is_kernel_of("g.bias", (4, 1), (4,))
        (False, False)
        >>> is_kernel_of("concat.weight", (1, 8, 1, 1), (8,))
        True
    """
    if name == "concat.weight":
        canonical = (1, *canonical)
    elif not (name.endswith(".weight") and len(canonical) == 2):
        return False
    rest = shape[len(canonical) :]
    return tuple(shape[: len(canonical)]) == tuple(canonical) and all(n == 1 for n in rest)


def is_real_dtype(dtype) -> bool:
    """Whether `dtype` is a real number type (any float or integer; not bool, complex, text).

    Example:
        >>> is_real_dtype(np.float16), is_real_dtype(np.int8), is_real_dtype(np.bool_)
        (True, True, False)
    """
    dtype = np.dtype(dtype)
    return bool(np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer))


def host_values(value: Any) -> Any:
    """A framework tensor (anything with ``detach``: torch; on any device, with grad or not)
    as a NumPy array of its values on the host, bfloat16 - which NumPy lacks - as float32
    (exact); anything else as given.

    Example:
        >>> host_values([1.0, 2.0])
        [1.0, 2.0]
    """
    if not hasattr(value, "detach"):
        return value
    tensor = value.detach().cpu()
    try:
        return tensor.numpy()
    except TypeError:  # torch's "unsupported ScalarType BFloat16"
        return tensor.float().numpy()


def _as_array(value, name: str) -> np.ndarray:
    """`value` as an array, or a `WeightError` naming the weight (ragged lists, odd objects)."""
    try:
        return np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise WeightError(
            f"weight {name!r} cannot be read as an array ({type(value).__name__}): {exc}"
        ) from exc
