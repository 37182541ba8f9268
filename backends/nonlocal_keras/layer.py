"""`NonLocalBlock`: the non-local block as a Keras 3 layer (TensorFlow, JAX or PyTorch).

Weights are created in `build()` and `call()` uses `keras.ops` only (through
`nonlocal_keras.functional`), so the same layer runs on every Keras backend, inside
Functional and Sequential models, under `jit_compile`, and survives `model.save` /
`keras.models.load_model`. Semantics are those of `nonlocal_core.reference.nonlocal_forward`.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import keras
import ml_dtypes
import numpy as np
from keras import ops

from nonlocal_core import InputError, NonLocalConfig, check_shapes, check_weights
from nonlocal_core.config import require_flag
from nonlocal_core.convert.pretrained import block_state, load_block
from nonlocal_core.weights import fit_kernels

from . import functional as F
from . import strategies as S

_FIELDS = tuple(f.name for f in dataclasses.fields(NonLocalConfig))
# The arguments of `NonLocalBlock.call`, in order.
_CALL_ARGS = ("x", "context", "key_mask", "training", "return_attention")

# Canonical name -> (layer attribute, whether the canonical tensor is the transposed kernel).
# Keras kernels are (in, out); the canonical 1x1 projections are (out, in).
_CANONICAL = {
    "theta.weight": ("theta_kernel", True),
    "theta.bias": ("theta_bias", False),
    "phi.weight": ("phi_kernel", True),
    "phi.bias": ("phi_bias", False),
    "g.weight": ("g_kernel", True),
    "g.bias": ("g_bias", False),
    "concat.weight": ("concat_kernel", False),
    "out.weight": ("out_kernel", True),
    "out.bias": ("out_bias", False),
    "norm.gamma": ("gamma", False),
    "norm.beta": ("beta", False),
    "norm.running_mean": ("moving_mean", False),
    "norm.running_var": ("moving_variance", False),
}


# Keywords of NonLocalBlock that are not NonLocalConfig fields.
_KERAS_EXTRAS = ("dtype", "name", "norm_momentum", "use_fused_attention", "strategy")


@keras.saving.register_keras_serializable(package="nonlocal_keras")
class NonLocalBlock(keras.layers.Layer):
    """The non-local block z = BN(W_z y) + x with y_i = sum_j f(x_i, x^_j) g(x^_j) / C(x).

    Takes every `NonLocalConfig` field as a keyword. Unlike the config, ``in_channels`` and
    ``spatial_dims`` may be left out (read from the input shape in `build`) and
    ``data_format`` defaults to Keras's ``keras.config.image_data_format()``
    (``"channels_last"`` unless configured). Keras extras: ``norm_momentum`` (weight of the
    old running statistic, Keras convention: 0.9 = PyTorch's momentum 0.1; the running
    variance is updated with the unbiased batch variance, as PyTorch does),
    ``strategy`` (how the pairwise step runs, as in ``nonlocal_torch``: ``"auto"`` or one
    of ``"sdpa"``, ``"chunked"``, ``"associative"``, ``"sorted"``, ``"pairwise"`` that the
    instantiation allows, see `nonlocal_keras.strategies`; ``auto`` never builds the
    N x N' matrix beyond a small size, and ``block.strategy`` may be changed at any
    time), ``use_fused_attention`` (False keeps ``auto`` off
    `keras.ops.dot_product_attention`), and the usual layer kwargs (``name``, ``dtype``
    policy, ...).

    `call(x, context=None, key_mask=None, training=None, return_attention=False)`: x^ is
    `context` (default x); `key_mask` is boolean over the key grid after subsampling,
    ``(B, *S')`` or ``(B, N')``, True = valid; `training` makes BN use batch statistics and
    update its running ones; `return_attention` also returns the (B, N, N') matrix a_ij.
    ``x`` and ``context`` must be floating point (any float dtype is converted to the
    compute dtype); integer, bool, complex, string and object arrays are an `InputError`
    naming the argument (spec IO-3: an integer tensor is most often raw pixels or token ids
    that the network should have converted or embedded first). A new block is the identity
    (BN gamma = beta = 0).

    Example:
        >>> import numpy as np
        >>> block = NonLocalBlock(subsample=True)
        >>> x = np.random.default_rng(0).normal(size=(2, 8, 8, 16)).astype("float32")
        >>> z, a = block(x, return_attention=True)
        >>> bool(np.allclose(keras.ops.convert_to_numpy(z), x)), tuple(a.shape)  # keys pooled
        (True, (2, 64, 16))
    """

    def __init__(
        self,
        in_channels: int | None = None,
        *,
        spatial_dims: int | None = None,
        instantiation: str = "embedded_gaussian",
        inter_channels: int | None = None,
        context_channels: int | None = None,
        logit_scale: Any = None,
        subsample: Any = False,
        pool_position: str = "after_projection",
        norm: str | None = "batch",
        norm_eps: float = 1e-5,
        residual: bool = True,
        data_format: str | None = None,
        norm_momentum: float = 0.9,
        use_fused_attention: bool = True,
        strategy: str = "auto",
        **kwargs: Any,
    ) -> None:
        _check_dtype_argument(kwargs.get("dtype"))
        super().__init__(**kwargs)
        _check_policy(self.dtype_policy, kwargs.get("dtype"))
        if data_format is None:
            data_format = keras.config.image_data_format()
        self._fields = {
            "in_channels": in_channels,
            "spatial_dims": spatial_dims,
            "instantiation": instantiation,
            "inter_channels": inter_channels,
            "context_channels": context_channels,
            "logit_scale": logit_scale,
            "subsample": list(subsample) if isinstance(subsample, tuple) else subsample,
            "pool_position": pool_position,
            "norm": norm,
            "norm_eps": norm_eps,
            "residual": residual,
            "data_format": data_format,
        }
        if not (
            isinstance(norm_momentum, numbers.Real)
            and not isinstance(norm_momentum, bool)
            and 0.0 <= float(norm_momentum) <= 1.0
        ):
            raise ValueError(
                f"NonLocalBlock.norm_momentum={norm_momentum!r} is invalid: expected a float "
                "in [0, 1] (weight of the old running statistic)"
            )
        self.norm_momentum = float(norm_momentum)
        self.use_fused_attention = require_flag(
            use_fused_attention, "NonLocalBlock.use_fused_attention"
        )
        if not isinstance(strategy, str) or strategy not in S.STRATEGIES:
            raise ValueError(
                f"NonLocalBlock.strategy={strategy!r} is invalid: expected one of {S.STRATEGIES}"
            )
        if isinstance(instantiation, str) and instantiation in S.ALLOWED_STRATEGIES:
            S.check_strategy(strategy, instantiation)
        self.strategy = strategy
        self._config: NonLocalConfig | None = None
        # Set by `nonlocal_keras.capture_attention`: while set, every call passes its
        # (B, N, N') attention to this callable (and so materialises it), returning z as
        # usual. A callable, not a list: Keras would wrap an assigned list in a copy.
        self._attention_sink: Callable[[Any], None] | None = None
        if in_channels is not None and spatial_dims is not None:
            self._config = NonLocalConfig(**self._fields)
        else:
            self._validate_partial()

    def _validate_partial(self) -> None:
        """Check every given field now, with stand-ins for the ones the input will fix."""
        fields = dict(self._fields)
        if fields["spatial_dims"] is None:
            sub = fields["subsample"]
            fields["spatial_dims"] = len(sub) if isinstance(sub, list | tuple) else 2
        if fields["in_channels"] is None:
            # Gaussian needs C_ctx = C: borrow a valid context_channels (an invalid one is
            # then reported under its own name).
            ctx = fields["context_channels"]
            valid = isinstance(ctx, numbers.Integral) and not isinstance(ctx, bool) and ctx >= 1
            same = fields["instantiation"] == "gaussian" and valid
            fields["in_channels"] = ctx if same else 1
        NonLocalConfig(**fields)

    # Config -------------------------------------------------------------------------------

    @property
    def nonlocal_config(self) -> NonLocalConfig:
        """The block's `NonLocalConfig` (known once `in_channels`/`spatial_dims` are).

        Example:
            >>> NonLocalBlock(8, spatial_dims=1).nonlocal_config.inter_channels
            4
        """
        if self._config is None:
            raise ValueError(
                f"{self.name}: in_channels/spatial_dims are read from the first input; "
                "call or build the layer first, or pass them to the constructor"
            )
        return self._config

    def _resolve(self, x_shape) -> NonLocalConfig:
        """The config for an input of `x_shape`: the block's own, or one read from the shape.

        Not kept here: `build` keeps it once every shape is checked, so that a rejected
        first input leaves the block as it was.
        """
        if self._config is not None:
            return self._config
        x_shape = tuple(x_shape)
        fields = dict(self._fields)
        if fields["spatial_dims"] is None:
            fields["spatial_dims"] = len(x_shape) - 2
        if not 1 <= fields["spatial_dims"] <= 3:
            raise InputError(
                f"x has shape {x_shape} (rank {len(x_shape)}): expected rank 3, 4 or 5 "
                "(batch, 1 to 3 spatial axes, channels)"
            )
        if fields["in_channels"] is None:
            axis = 1 if fields["data_format"] == "channels_first" else -1
            if x_shape[axis] is None:
                raise InputError(
                    f"x has shape {x_shape}: the channel axis ({axis}) must be known to build "
                    "the layer, or pass in_channels"
                )
            fields["in_channels"] = int(x_shape[axis])
        return NonLocalConfig(**fields)

    def get_config(self) -> dict[str, Any]:
        """Keras serialisation: the layer kwargs plus every (resolved) config field.

        Example:
            >>> cfg = NonLocalBlock(8, spatial_dims=3, subsample=True).get_config()
            >>> cfg["subsample"], cfg["inter_channels"]
            ([1, 2, 2], 4)
        """
        fields = self._config.to_dict() if self._config is not None else dict(self._fields)
        return {
            **super().get_config(),
            **fields,
            "norm_momentum": self.norm_momentum,
            "use_fused_attention": self.use_fused_attention,
            "strategy": self.strategy,
        }

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any] | NonLocalConfig, **kwargs: Any
    ) -> NonLocalBlock:
        """From a `get_config()` dict (Keras deserialisation) or a `NonLocalConfig`.

        With a `NonLocalConfig`, `kwargs` are the Keras extras (``dtype``, ``name``,
        ``norm_momentum``, ``use_fused_attention``), as in ``nonlocal_torch``.

        Example:
            >>> block = NonLocalBlock.from_config(NonLocalConfig(8, spatial_dims=1))
            >>> block.nonlocal_config.data_format  # the config's, not Keras's default
            'channels_first'
        """
        if isinstance(config, NonLocalConfig):
            return cls(**config.to_dict(), **kwargs)
        if kwargs:
            raise TypeError(
                f"NonLocalBlock.from_config got keyword arguments {sorted(kwargs)} with a "
                "Keras config dict: put them in the dict"
            )
        return super().from_config(dict(config))

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: Any,
        source: str | None = None,
        *,
        block: str | None = None,
        data_format: str | None = None,
        **kwargs: Any,
    ) -> NonLocalBlock:
        """A built layer holding a checkpoint's weights.

        `checkpoint` is a state dict (NumPy arrays or tensors) or a file (PyTorch, Caffe2
        pickle, safetensors, ``.npz``; read without running code, and without PyTorch).
        `source` names its layout - one of `nonlocal_core.SOURCES` - or is None for a file
        written by `nonlocal_core.save`. The structure is read from the weights; keyword
        arguments in `source`'s own names fill in what they cannot tell (see
        `nonlocal_core.profile`), and the Keras extras (``dtype``, ``name``,
        ``norm_momentum``, ``use_fused_attention``) go to the layer. `data_format` defaults
        to Keras's ``image_data_format()``: the weights do not depend on it.

        Example:
            >>> from nonlocal_core import init_weights, profile
            >>> from nonlocal_core.convert import to_state_dict
            >>> cfg = profile("timm", in_channels=16)
            >>> layer = NonLocalBlock.from_pretrained(to_state_dict(init_weights(cfg), "timm", cfg),
            ...                                       "timm")
            >>> layer.nonlocal_config.inter_channels, layer.nonlocal_config.data_format
            (8, 'channels_last')
        """
        extras = {k: kwargs.pop(k) for k in _KERAS_EXTRAS if k in kwargs}
        found = load_block(checkpoint, source, block, **kwargs)
        if data_format is None:
            data_format = keras.config.image_data_format()
        layer = cls.from_config(found.config.replace(data_format=data_format), **extras)
        layer.load_canonical_weights(found.weights)
        return layer

    @classmethod
    def from_block(cls, other: Any, *, data_format: str | None = None, **kwargs: Any):
        """A built layer computing what `other` computes: a block of any backend (a
        ``nonlocal_torch.NonLocalBlock``, another layer), through its config and canonical
        weights. `data_format` defaults to Keras's ``image_data_format()``; `kwargs` are
        the Keras extras (``dtype``, ``name``, ...).

        Example:
            >>> source = NonLocalBlock(8, spatial_dims=1, data_format="channels_first")
            >>> copy = NonLocalBlock.from_block(source)
            >>> copy.nonlocal_config.data_format, copy.nonlocal_config.inter_channels
            ('channels_last', 4)
        """
        config, weights = block_state(other)
        if data_format is None:
            data_format = keras.config.image_data_format()
        layer = cls.from_config(config.replace(data_format=data_format), **kwargs)
        layer.load_canonical_weights(weights)
        return layer

    # Weights ------------------------------------------------------------------------------

    def build(self, x_shape, context_shape=None, key_mask_shape=None) -> None:
        """Create theta, phi, g, w_f, W_z and BN weights at the spec's initialisation."""
        cfg = self._resolve(x_shape)
        check_shapes(cfg, tuple(x_shape), _maybe(context_shape), _maybe(key_mask_shape))
        self._config = cfg
        c, ci, cc = cfg.in_channels, cfg.inter_channels, cfg.context_channels
        small = keras.initializers.RandomNormal(stddev=0.01)

        def add(name, shape, init, **kwargs):
            setattr(self, name, self.add_weight(name=name, shape=shape, initializer=init, **kwargs))

        if cfg.instantiation != "gaussian":
            add("theta_kernel", (c, ci), small)
            add("theta_bias", (ci,), "zeros")
            add("phi_kernel", (cc, ci), small)
            add("phi_bias", (ci,), "zeros")
        add("g_kernel", (cc, ci), small)
        add("g_bias", (ci,), "zeros")
        if cfg.instantiation == "concatenation":
            add("concat_kernel", (2 * ci,), small)
        # Without a norm, W_z starts at zero so that z = x either way.
        add("out_kernel", (ci, c), small if cfg.norm == "batch" else "zeros")
        add("out_bias", (c,), "zeros")
        if cfg.norm == "batch":
            add("gamma", (c,), "zeros")
            add("beta", (c,), "zeros")
            # Running statistics stay in the variable dtype (float32 under mixed precision).
            add("moving_mean", (c,), "zeros", trainable=False, autocast=False)
            add("moving_variance", (c,), "ones", trainable=False, autocast=False)
        self.built = True

    def _ensure_built(self) -> None:
        """Build from the config alone (unknown batch and extents) when not built yet."""
        if self.built:
            return
        cfg = self.nonlocal_config
        spatial = (None,) * cfg.spatial_dims

        def shape(channels: int) -> tuple[int | None, ...]:
            if cfg.data_format == "channels_first":
                return (None, channels, *spatial)
            return (None, *spatial, channels)

        ctx = shape(cfg.context_channels) if cfg.context_channels != cfg.in_channels else None
        self.build(shape(cfg.in_channels), ctx)

    def load_canonical_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Set every weight from the spec's canonical layout (checked first: `WeightError`).

        Projections may also come as PyTorch conv kernels, ``(C', C, 1, 1)``: any shape that
        differs from the canonical one only by axes of length 1 (so
        ``load_canonical_weights(torch_block.canonical_weights())`` and state-dict-shaped
        arrays both work; tensors are read with ``np.asarray``).

        Every value is checked and converted to the variable dtype before the first one is
        assigned: a rejected load leaves every weight as it was.

        Example:
            >>> from nonlocal_core import random_weights
            >>> block = NonLocalBlock(4, spatial_dims=2, instantiation="dot_product")
            >>> w = random_weights(block.nonlocal_config, seed=0)
            >>> block.load_canonical_weights(w)
            >>> bool(np.allclose(block.canonical_weights()["theta.weight"], w["theta.weight"]))
            True
        """
        weights = fit_kernels(weights, self.nonlocal_config)
        check_weights(weights, self.nonlocal_config)
        dtype = _numpy_dtype(self.variable_dtype)
        values = {}
        # Overflow to +-inf in a narrow variable dtype is IEEE rounding, as in `assign`.
        with np.errstate(over="ignore"):
            for name, value in weights.items():
                attr, transpose = _CANONICAL[name]
                array = np.asarray(value).astype(dtype)
                values[attr] = array.T if transpose else array
        self._ensure_built()
        for attr, value in values.items():
            getattr(self, attr).assign(value)

    def canonical_weights(self) -> dict[str, np.ndarray]:
        """Every weight in the spec's canonical layout, as NumPy arrays (variable dtype).

        Example:
            >>> block = NonLocalBlock(4, spatial_dims=1, norm=None)
            >>> sorted(block.canonical_weights())[:2]
            ['g.bias', 'g.weight']
        """
        self._ensure_built()
        out = {}
        for name, (attr, transpose) in _CANONICAL.items():
            var = getattr(self, attr, None)
            if var is None:
                continue
            value = to_numpy(var)
            out[name] = value.T if transpose else value
        return out

    # Forward ------------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any):
        """Check the call's arguments as given, then `keras.layers.Layer.__call__`.

        Keras converts array arguments to tensors before `call` sees them (on JAX it parses
        a string array of numbers; elsewhere the failure does not name the argument), so
        their dtypes are checked here, on the raw values (JAX would wrap an int64 array to
        int32 before `call` could report it).
        """
        args = list(args)
        for position, name in enumerate(_CALL_ARGS):
            if position < len(args):
                args[position] = self._checked_argument(name, args[position])
            elif name in kwargs:
                kwargs[name] = self._checked_argument(name, kwargs[name])
        return super().__call__(*args, **kwargs)

    def _checked_argument(self, name: str, value: Any) -> Any:
        if name == "training":
            return None if value is None else require_flag(value, "training")
        if name == "return_attention":
            return require_flag(value, "return_attention")
        if value is None and name != "x":
            return None
        if name == "key_mask":
            return _bool_input(value, name)
        return _real_input(value, name, self.compute_dtype)

    def compute_output_shape(self, x_shape, context_shape=None, key_mask_shape=None):
        """z has the shape of x."""
        return tuple(x_shape)

    def compute_output_spec(
        self, x, context=None, key_mask=None, training=None, return_attention=False
    ):
        """z like x, and with `return_attention` the (B, N, N') attention matrix."""
        return_attention = require_flag(return_attention, "return_attention")
        cfg = self._resolve(x.shape)
        shapes = check_shapes(cfg, tuple(x.shape), _shape_of(context), _shape_of(key_mask))
        z = keras.KerasTensor(tuple(x.shape), dtype=self.compute_dtype)
        if not return_attention:
            return z
        attention = (shapes.batch, shapes.num_queries, shapes.num_keys)
        return z, keras.KerasTensor(attention, dtype=self.compute_dtype)

    def call(self, x, context=None, key_mask=None, training=None, return_attention=False):
        """z (and a_ij with `return_attention`); see the class docstring."""
        # Checked again here: `stateless_call` and subclasses reach `call` without __call__.
        training = None if training is None else require_flag(training, "training")
        return_attention = require_flag(return_attention, "return_attention")
        dtype = self.compute_dtype
        x = ops.cast(ops.convert_to_tensor(_real_input(x, "x", dtype)), dtype)
        if context is not None:
            context = ops.cast(ops.convert_to_tensor(_real_input(context, "context", dtype)), dtype)
        if key_mask is not None:
            key_mask = ops.convert_to_tensor(_bool_input(key_mask, "key_mask"))
        cfg = self._resolve(x.shape)
        check_shapes(cfg, _static_shape(x.shape), _shape_of(context), _shape_of(key_mask))

        x_grid = F.to_grid(x, cfg.data_format)
        ctx_grid = x_grid if context is None else F.to_grid(context, cfg.data_format)
        mask = None if key_mask is None else F.flat_key_mask(key_mask, ops.shape(x)[0])
        theta = (
            x_grid
            if cfg.instantiation == "gaussian"
            else F.project(x_grid, self.theta_kernel, self.theta_bias)
        )
        theta = F.flatten_positions(theta)
        weights = {"g_kernel": self.g_kernel, "g_bias": self.g_bias}
        if cfg.instantiation != "gaussian":
            weights.update(phi_kernel=self.phi_kernel, phi_bias=self.phi_bias)
        phi, g = F.keys_and_values(ctx_grid, weights, cfg)

        capture = self._attention_sink is not None
        y, attention = S.attend(
            theta,
            phi,
            g,
            mask,
            cfg,
            self.strategy,
            concat_kernel=getattr(self, "concat_kernel", None),
            return_attention=return_attention or capture,
            use_fused_attention=self.use_fused_attention,
        )

        u = F.project(y, self.out_kernel, self.out_bias)
        if cfg.norm == "batch":
            u = self._batch_norm(u, bool(training))
        x_flat = F.flatten_positions(x_grid)
        z_flat = u + x_flat if cfg.residual else u
        z = F.from_grid(ops.reshape(z_flat, ops.shape(x_grid)), cfg.data_format)
        if capture:
            self._attention_sink(attention)
        return (z, attention) if return_attention else z

    def _batch_norm(self, u, training: bool):
        """BN over (B, N, C) in float32 for half inputs; training updates running stats."""
        cfg = self.nonlocal_config
        acc = F.accumulation_dtype(self.compute_dtype)
        u_acc = ops.cast(u, acc)
        if training:
            mean, var = F.batch_moments(u_acc)
            self._update_running_stats(u_acc, mean, var)
        else:
            mean = ops.cast(self.moving_mean, acc)
            var = ops.cast(self.moving_variance, acc)
        gamma, beta = ops.cast(self.gamma, acc), ops.cast(self.beta, acc)
        return ops.cast(F.batch_norm(u_acc, gamma, beta, mean, var, cfg.norm_eps), u.dtype)

    def _update_running_stats(self, u, mean, var) -> None:
        shape = ops.shape(u)
        n = ops.cast(shape[0] * shape[1], var.dtype)
        # The running variance estimates the population one: unbiased, as PyTorch and Caffe2.
        unbiased = var * n / (n - 1.0 + ops.cast(n <= 1.0, var.dtype))  # n = 1: var itself
        m = self.norm_momentum
        for stat, batch_value in ((self.moving_mean, mean), (self.moving_variance, unbiased)):
            value = ops.stop_gradient(ops.cast(batch_value, stat.dtype))
            stat.assign(stat * m + value * (1.0 - m))


def to_numpy(tensor) -> np.ndarray:
    """A tensor or variable of the current backend as NumPy (bfloat16 on PyTorch: float32).

    `keras.ops.convert_to_numpy` goes through ``np.array(tensor)``, which NumPy 2 deprecates
    for these backends' arrays (their ``__array__`` takes no ``copy`` keyword) with a warning
    per call; this reads them directly.

    Example:
        >>> to_numpy(keras.ops.ones((2,))).tolist()
        [1.0, 1.0]
    """
    backend = keras.backend.backend()
    value = tensor.value if isinstance(tensor, keras.Variable) else tensor
    if backend == "jax":
        import jax

        return np.asarray(jax.device_get(value))
    if backend == "tensorflow":
        return np.array(value.numpy())  # a copy: .numpy() may share the tensor's buffer
    if backend != "torch":
        return ops.convert_to_numpy(value)
    import torch

    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
        value = value.to(torch.float32)  # NumPy has no bfloat16; every bfloat16 fits float32
    return value.numpy().copy()  # .numpy() shares memory: later assigns would show through


def _numpy_dtype(dtype) -> np.dtype:
    """The NumPy dtype of a Keras dtype name (bfloat16: `ml_dtypes`'s, which Keras reads).

    Example:
        >>> _numpy_dtype("float32"), _numpy_dtype("bfloat16")
        (dtype('float32'), dtype(bfloat16))
    """
    dtype = keras.backend.standardize_dtype(dtype)
    return np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)


def _raw_dtype(value, name: str) -> tuple[Any, str]:
    """`value` (a tensor stays one, anything else becomes a NumPy array) and its dtype name.

    The dtype is read before any conversion to a tensor, which would reject some dtypes
    with errors that do not name the argument, or (JAX) parse strings as numbers.
    """
    if isinstance(value, keras.KerasTensor) or ops.is_tensor(value):
        return value, keras.backend.standardize_dtype(value.dtype)
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, OverflowError, RuntimeError) as exc:
        raise InputError(f"{name} ({_brief(value)}) cannot be read as an array: {exc}") from exc
    dtype = array.dtype
    if dtype.kind in "US":
        return array, "str" if dtype.kind == "U" else "bytes"
    if dtype.kind == "V":  # ml_dtypes' bfloat16, float8, int4 (or a structured array)
        try:
            return array, keras.backend.standardize_dtype(dtype)
        except ValueError:
            return array, str(dtype)
    return array, str(dtype)  # NumPy's names: bool, int8, float128, complex64, object, ...


def _real_input(value, name: str, compute_dtype: str):
    """`value` as a tensor or NumPy array of a floating dtype, else an `InputError` naming it.

    NumPy arrays other than float16/32/64 (long double, ml_dtypes' bfloat16 and float8) are
    converted to `compute_dtype` here, by NumPy: a backend could not hold some of them.

    Example:
        >>> _real_input(np.zeros(2, "complex64"), "x", "float32")
        Traceback (most recent call last):
        ...
        nonlocal_core.shapes.InputError: x has dtype complex64: expected a floating-point tensor or array, got ndarray of shape (2,)
        >>> _real_input(np.arange(2), "x", "float32")
        Traceback (most recent call last):
        ...
        nonlocal_core.shapes.InputError: x has dtype int64: expected a floating-point tensor or array, got ndarray of shape (2,); convert it first, e.g. keras.ops.cast(x, "float32")
    """  # noqa: E501
    if value is None:
        raise InputError(f"{name} is None: expected a floating-point tensor or array")
    value, dtype = _raw_dtype(value, name)
    if "float" not in dtype:
        hint = f'; convert it first, e.g. keras.ops.cast({name}, "float32")'
        raise InputError(
            f"{name} has dtype {dtype}: expected a floating-point tensor or array, got "
            f"{_brief(value)}{hint if 'int' in dtype else ''}"
        )
    if isinstance(value, np.ndarray) and dtype not in ("float16", "float32", "float64"):
        return value.astype(_numpy_dtype(compute_dtype))
    return value


def _bool_input(value, name: str):
    """`value` as a tensor or NumPy array of dtype bool, else an `InputError` naming it."""
    value, dtype = _raw_dtype(value, name)
    if dtype != "bool":
        raise InputError(
            f"{name} has dtype {dtype}: expected bool (True = valid key), got {_brief(value)}"
        )
    return value


def _brief(value) -> str:
    """A short description of a value for error messages: no array dumps."""
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(value, np.generic):
        return f"{type(value).__name__} of shape {tuple(shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _check_dtype_argument(dtype) -> None:
    """A ValueError naming ``dtype`` when Keras cannot read it as a dtype policy at all."""
    if dtype is None:
        return
    try:
        keras.dtype_policies.get(dtype)
    except Exception as exc:  # Keras raises ValueError, TypeError, AttributeError, ...
        raise ValueError(
            f"NonLocalBlock.dtype={dtype!r} is invalid ({type(exc).__name__}: {exc}): "
            "expected a floating dtype or policy such as 'float32', 'float64' or "
            "'mixed_bfloat16'"
        ) from exc


def _check_policy(policy, dtype) -> None:
    """A ValueError naming ``dtype`` unless `policy` computes and stores in floating point."""
    compute, variable = policy.compute_dtype, policy.variable_dtype
    quantized = getattr(policy, "quantization_mode", None)
    floating = keras.backend.is_float_dtype(compute) and keras.backend.is_float_dtype(variable)
    if floating and quantized is None:
        return
    given = "" if dtype is not None else " (Keras's global dtype policy)"
    what = f" and is quantized ({quantized})" if quantized is not None else ""
    raise ValueError(
        f"NonLocalBlock.dtype={dtype!r}{given} is invalid: policy {policy.name!r} computes "
        f"in {compute} and stores variables in {variable}{what}: expected floating compute "
        "and variable dtypes, such as 'float32', 'float64' or 'mixed_bfloat16'"
    )


def _maybe(shape):
    return None if shape is None else tuple(shape)


def _shape_of(tensor):
    return None if tensor is None else _static_shape(tensor.shape)


def _static_shape(shape) -> tuple:
    """`shape` with every dimension that is not a concrete integer read as unknown (None).

    Exporters trace `call` with symbolic dimensions: JAX's shape polymorphism (jax2tf for a
    SavedModel, jax2onnx) passes `_DimExpr`s, whose comparisons with an integer raise when
    inconclusive ("Symbolic dimension comparison 'a' < '2' is inconclusive"), and
    ``torch.jit.trace`` (ONNX export with dynamic axes) passes 0-d tensors, whose
    comparisons would be frozen into the trace as constants. The shape checks treat such a
    dimension as they treat TensorFlow's unknown ones: not checked until it is concrete.

    Example:
        >>> _static_shape((None, 4, "a symbolic dimension"))
        (None, 4, None)
    """
    return tuple(d if isinstance(d, numbers.Integral) else None for d in shape)
