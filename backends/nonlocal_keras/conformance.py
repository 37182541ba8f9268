"""`KerasAdapter`: drives `nonlocal_keras.NonLocalBlock` for the conformance suite.

Uses whichever Keras backend this process imported (``KERAS_BACKEND``: the suite's
``keras-tensorflow`` / ``keras-jax`` / ``keras-torch`` set it before importing Keras). The
layer itself is backend-agnostic; only `gradients` needs each backend's own autodiff
(`tf.GradientTape`, `jax.grad` over `Layer.stateless_call`, `torch.autograd.grad`).

On JAX, float64 needs ``jax_enable_x64``; the adapter turns it on when it is created so the
float64 tier runs in float64 rather than silently in float32.

``NONLOCAL_KERAS_STRATEGY`` forces execution strategies: a comma-separated list, of which
each block takes the first its instantiation (and, for ``sdpa``, this backend and dtype)
can run exactly, else ``auto``; e.g. ``NONLOCAL_KERAS_STRATEGY=chunked,sorted``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
from keras import ops

from nonlocal_conformance.adapter import Capabilities, Output
from nonlocal_core import NonLocalConfig

from .layer import _CANONICAL, NonLocalBlock, to_numpy
from .strategies import ALLOWED_STRATEGIES, STRATEGIES, fused_attention_is_exact

STRATEGY_ENV = "NONLOCAL_KERAS_STRATEGY"

_BACKEND_MODULE = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
_CLEAR_SESSION_EVERY = 256
_RUNNING_STATS = ("norm.running_mean", "norm.running_var")


def _gpu_available(backend: str) -> bool:
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


# What Keras wraps around an error raised inside a layer's call: a heading, bold (ANSI)
# around the layer's message, then every argument's value - which names every argument and
# would let any message pass the suite's "names the argument" checks.
_KERAS_HEADING = re.compile(r"^Exception encountered when calling [^\n]*\n\n")
_KERAS_ARGUMENTS = "\n\nArguments received by "
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@contextlib.contextmanager
def _own_message():
    r"""Re-raise a ValueError/TypeError from the layer with its own message only (the suite
    judges what the layer says, not the decoration Keras adds).

    Example:
        >>> with _own_message():
        ...     raise ValueError("Exception encountered when calling NonLocalBlock.call().\n\n"
        ...                      "\x1b[1mx has rank 2\x1b[0m" + _KERAS_ARGUMENTS + "...: x=...")
        Traceback (most recent call last):
        ...
        ValueError: x has rank 2
    """
    try:
        yield
    except (ValueError, TypeError) as exc:
        text = str(exc)
        own = _ANSI.sub("", _KERAS_HEADING.sub("", text.split(_KERAS_ARGUMENTS, 1)[0]))
        if own == text:
            raise
        try:  # the layer's own class (InputError, ...), as Keras itself rebuilds it
            error = type(exc)(own)
        except Exception:
            error = (ValueError if isinstance(exc, ValueError) else TypeError)(own)
        raise error from exc


class KerasAdapter:
    """The conformance adapter for the current Keras backend.

    Example:
        >>> adapter = KerasAdapter()
        >>> adapter.name.startswith("keras-"), "float64" in adapter.capabilities.dtypes
        (True, True)
    """

    def __init__(self, jit_forward: bool | None = None) -> None:
        # jit_forward (JAX only, default on): one compile per config and shape, which wins
        # when shapes rarely repeat (Hypothesis); eager JAX caches per operation and wins
        # on grids of configs that share shapes. Gradients are always jitted on JAX.
        self.backend = keras.backend.backend()
        self.jit_forward = self.backend == "jax" if jit_forward is None else bool(jit_forward)
        if self.backend not in _BACKEND_MODULE:
            raise RuntimeError(
                f"KERAS_BACKEND={self.backend!r}: nonlocal_keras supports tensorflow, jax, torch"
            )
        if self.backend == "jax":
            import jax

            jax.config.update("jax_enable_x64", True)
        self.name = f"keras-{self.backend}"
        forced = os.environ.get(STRATEGY_ENV, "")
        self.forced = tuple(s.strip() for s in forced.split(",") if s.strip())
        unknown = [s for s in self.forced if s not in STRATEGIES]
        if unknown:
            raise ValueError(f"{STRATEGY_ENV}={forced!r}: unknown {unknown}, expected {STRATEGIES}")
        self._blocks_built = 0
        devices = {"cpu", "cuda"} if _gpu_available(self.backend) else {"cpu"}
        self.capabilities = Capabilities(
            dtypes=frozenset({"float64", "float32", "bfloat16", "float16"}),
            devices=frozenset(devices),
            gradients=True,
        )

    def versions(self) -> dict[str, str]:
        """Keras and its backend's versions, e.g. ``{"keras": "3.15.1", "jax": "0.10.2"}``."""
        module = importlib.import_module(_BACKEND_MODULE[self.backend])
        return {"keras": keras.__version__, self.backend: module.__version__}

    def options(self) -> dict[str, str]:
        """What changes the run: the execution strategy forced through the environment.

        Example:
            >>> sorted(KerasAdapter().options())
            ['strategy']
        """
        return {"strategy": ",".join(self.forced) or "auto"}

    def _device(self, device: str):
        return keras.device("gpu:0" if device == "cuda" else "cpu:0")

    def build(
        self, config: NonLocalConfig, weights: Mapping[str, np.ndarray], *, dtype: str, device: str
    ) -> Any:
        """A `NonLocalBlock` with dtype policy `dtype` holding exactly `weights`."""
        self._blocks_built += 1
        if self.backend == "tensorflow" and self._blocks_built % _CLEAR_SESSION_EVERY == 0:
            # Eager TensorFlow keeps state for every block and input shape (~0.4 MB each):
            # a thorough run builds tens of thousands and grew to 9.8 GB without this.
            keras.backend.clear_session(free_memory=False)
        with self._device(device):
            block = NonLocalBlock(
                **config.to_dict(), dtype=dtype, strategy=self._strategy(config, dtype)
            )
            if self.backend == "jax":
                with _no_random_init(block):
                    block.load_canonical_weights(weights)
            else:
                block.load_canonical_weights(weights)
        block._conformance_device = device
        return block

    def _strategy(self, config: NonLocalConfig, dtype: str) -> str:
        for strategy in self.forced:
            runnable = strategy in ALLOWED_STRATEGIES[config.instantiation]
            if strategy == "sdpa":
                runnable = runnable and fused_attention_is_exact(config, dtype) is None
            if runnable:
                return strategy
        return "auto"

    def _tensor(self, block, value):
        if value is None:
            return None
        with self._device(block._conformance_device):
            value = np.asarray(value)
            if value.dtype == np.bool_:
                # An explicit dtype: without one, JAX compiles a copy per mask shape.
                return ops.convert_to_tensor(value, dtype="bool")
            if not np.issubdtype(value.dtype, np.floating):
                return ops.convert_to_tensor(value)  # the layer reports the bad dtype
            return ops.convert_to_tensor(value, dtype=block.compute_dtype)

    def forward(
        self,
        block: Any,
        x: np.ndarray,
        *,
        context: np.ndarray | None = None,
        key_mask: np.ndarray | None = None,
        training: bool = False,
        return_attention: bool = False,
    ):
        """Run the layer (eagerly; jitted on JAX); z (and a_ij) back as float64 NumPy."""
        inputs = (
            self._tensor(block, x),
            self._tensor(block, context),
            self._tensor(block, key_mask),
        )
        with self._device(block._conformance_device), _own_message():
            if self.backend == "jax" and self.jit_forward and _all_float_or_bool(inputs):
                out = self._forward_jax(block, *inputs, training, return_attention)
            else:
                out = block(
                    inputs[0],
                    context=inputs[1],
                    key_mask=inputs[2],
                    training=training,
                    return_attention=return_attention,
                )
        z, attention = out if return_attention else (out, None)
        return Output(
            z=_numpy(z),
            dtype=keras.backend.standardize_dtype(z.dtype),
            attention=None if attention is None else _numpy(attention),
        )

    def export_weights(self, block: Any) -> dict[str, np.ndarray]:
        """The layer's weights in the canonical layout, as float64."""
        return {k: np.asarray(v, dtype=np.float64) for k, v in block.canonical_weights().items()}

    def gradients(
        self,
        block: Any,
        x: np.ndarray,
        cotangent: np.ndarray,
        *,
        context: np.ndarray | None = None,
        key_mask: np.ndarray | None = None,
        training: bool = False,
    ) -> dict[str, np.ndarray]:
        """Gradients of sum(z * cotangent) w.r.t. x, context and every trainable weight."""
        tensors = {
            "x": self._tensor(block, x),
            "context": self._tensor(block, context),
            "cotangent": self._tensor(block, cotangent),
            "key_mask": self._tensor(block, key_mask),
        }
        names = [n for n in _CANONICAL if n not in _RUNNING_STATS and hasattr(block, _attr(n))]
        with self._device(block._conformance_device):
            grads = getattr(self, f"_grads_{self.backend}")(block, tensors, names, training)
        out = {}
        for name, value in grads.items():
            value = _numpy(value)
            transpose = name in _CANONICAL and _CANONICAL[name][1]
            out[name] = value.T if transpose else value
        return out

    @staticmethod
    def _forward_jax(block, x, context, key_mask, training, return_attention):
        # Eager JAX compiles every op anew for every new shape (seconds per Hypothesis
        # example); one jit of the whole stateless call compiles once per shape instead.
        import jax

        key = _jit_key(block, "forward", training, return_attention)
        if key not in _JIT_CACHE:

            def run(trainable, non_trainable, x, context, key_mask):
                return block.stateless_call(
                    trainable,
                    non_trainable,
                    x,
                    context=context,
                    key_mask=key_mask,
                    training=training,
                    return_attention=return_attention,
                )

            _JIT_CACHE[key] = jax.jit(run)
        out, non_trainable = _JIT_CACHE[key](
            [v.value for v in block.trainable_variables],
            [v.value for v in block.non_trainable_variables],
            x,
            context,
            key_mask,
        )
        for variable, value in zip(block.non_trainable_variables, non_trainable):
            variable.assign(value)  # running statistics, as an eager call would update them
        return out

    # One autodiff per backend: the layer is shared, differentiation is not. -------------

    @staticmethod
    def _loss(block, x, context, t, training):
        z = block(x, context=context, key_mask=t["key_mask"], training=training)
        return ops.sum(z * t["cotangent"])

    def _grads_tensorflow(self, block, t, names, training):
        import tensorflow as tf

        inputs = {k: t[k] for k in ("x", "context") if t[k] is not None}
        variables = [getattr(block, _attr(n)) for n in names]
        with tf.GradientTape() as tape:
            tape.watch(list(inputs.values()))
            loss = self._loss(block, t["x"], t["context"], t, training)
        grads = tape.gradient(loss, [*inputs.values(), *variables])
        return dict(zip([*inputs, *names], grads))

    def _grads_torch(self, block, t, names, training):
        import torch

        inputs = {
            k: t[k].detach().clone().requires_grad_(True)
            for k in ("x", "context")
            if t[k] is not None
        }
        variables = [getattr(block, _attr(n)).value for n in names]
        loss = self._loss(block, inputs["x"], inputs.get("context"), t, training)
        grads = torch.autograd.grad(loss, [*inputs.values(), *variables], allow_unused=True)
        grads = [
            torch.zeros_like(p) if gr is None else gr
            for p, gr in zip([*inputs.values(), *variables], grads)
        ]
        return dict(zip([*inputs, *names], grads))

    def _grads_jax(self, block, t, names, training):
        import jax

        trainable = block.trainable_variables
        index = {id(v): i for i, v in enumerate(trainable)}
        positions = [index[id(getattr(block, _attr(n)))] for n in names]
        key = _jit_key(block, "gradients", training, False)
        if key not in _JIT_CACHE:

            def loss(inputs, values, non_trainable, key_mask, cotangent):
                z, _ = block.stateless_call(
                    values,
                    non_trainable,
                    inputs["x"],
                    context=inputs.get("context"),
                    key_mask=key_mask,
                    training=training,
                )
                return (z * cotangent).sum()

            # Jitted for the same reason as `_forward_jax`.
            _JIT_CACHE[key] = jax.jit(jax.grad(loss, argnums=(0, 1)))
        inputs = {k: t[k] for k in ("x", "context") if t[k] is not None}
        d_inputs, d_values = _JIT_CACHE[key](
            inputs,
            [v.value for v in trainable],
            [v.value for v in block.non_trainable_variables],
            t["key_mask"],
            t["cotangent"],
        )
        return {**d_inputs, **{n: d_values[p] for n, p in zip(names, positions)}}


class _LRU(OrderedDict):
    """A dict that keeps only its `size` most recently used entries."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __getitem__(self, key):
        self.move_to_end(key)
        return super().__getitem__(key)

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        while len(self) > self.size:
            self.popitem(last=False)


# Jitted functions of JAX runs, shared by blocks of the same structure: `stateless_call`
# reads every value from its arguments, so the block that traced a function is a template.
# Bounded: each holds its compiled executables, and a thorough run makes thousands.
_JIT_CACHE: _LRU = _LRU(64)


def _jit_key(block, kind: str, training: bool, return_attention: bool) -> tuple:
    return (
        kind,
        block.nonlocal_config,
        block.dtype_policy.name,
        block.norm_momentum,
        block.use_fused_attention,
        training,
        return_attention,
    )


@contextlib.contextmanager
def _no_random_init(block):
    """Create `block`'s weights as zeros copied from the host, not by its initialisers.

    `load_canonical_weights` checks that `weights` holds every weight before it builds, and
    overwrites them all right after, so the initial values are never read. Drawing them on
    JAX compiles a random normal (and its scale and shift, or a fill) per weight shape:
    about 280 compilations and an eighth of a `ci` run.
    """
    add_weight = block.add_weight

    def add_zero_weight(*args, initializer=None, **kwargs):
        return add_weight(*args, initializer=_host_zeros, **kwargs)

    # On the instance only, past Keras's attribute tracking, which would record it.
    object.__setattr__(block, "add_weight", add_zero_weight)
    try:
        yield
    finally:
        object.__delattr__(block, "add_weight")


def _host_zeros(shape, dtype=None):
    import jax
    import jax.numpy as jnp

    # device_put, not jnp.asarray: that would compile a copy per shape.
    return jax.device_put(np.zeros(shape, dtype=jnp.dtype(dtype or keras.config.floatx())))


def _all_float_or_bool(tensors) -> bool:
    """Inputs a jitted call accepts; anything else goes eager so the layer reports it."""
    return all(
        t is None or keras.backend.standardize_dtype(t.dtype) in _JIT_DTYPES for t in tensors
    )


_JIT_DTYPES = ("float64", "float32", "bfloat16", "float16", "bool")


def _attr(canonical_name: str) -> str:
    return _CANONICAL[canonical_name][0]


def _numpy(tensor) -> np.ndarray:
    return np.asarray(to_numpy(tensor), dtype=np.float64)
