"""`NonLocalBlock`: the non-local block as a native PyTorch module.

Built from standard parts - 1x1 ``nn.Conv{1,2,3}d`` for theta, phi, g and W_z, an
``nn.Linear`` for the concatenation weight w_f, ``nn.BatchNorm{1,2,3}d`` for the norm - so
``state_dict``, ``nn.SyncBatchNorm.convert_sync_batchnorm``, ``torch.compile``,
``torch.export``, autocast, channels_last memory formats and DDP work as for any module.
Semantics are those of `nonlocal_core.reference.nonlocal_forward`.
"""

from __future__ import annotations

import numbers
import typing
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nonlocal_core import InputError, NonLocalConfig, WeightError, check_shapes, check_weights
from nonlocal_core.config import require_config, require_flag
from nonlocal_core.convert.pretrained import block_state, load_block
from nonlocal_core.weights import fit_kernels, host_values

from .functional import attend_parts
from .strategies import _is_exporting, check_strategy, is_tracing

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
# Canonical norm names -> nn.BatchNorm attribute names.
_NORM_NAMES = {
    "gamma": "weight",
    "beta": "bias",
    "running_mean": "running_mean",
    "running_var": "running_var",
}


# Keywords of NonLocalBlock that are not NonLocalConfig fields.
_TORCH_EXTRAS = ("norm_momentum", "strategy", "device", "dtype")


class NonLocalBlock(nn.Module):
    """The non-local block z = BN(W_z y) + x with y_i = sum_j f(x_i, x^_j) g(x^_j) / C(x).

    Takes every `NonLocalConfig` field as a keyword (``in_channels`` positional) plus
    ``norm_momentum`` (BN running-stat momentum, framework-native), ``strategy`` (an exact
    execution strategy, ``"auto"`` by default: see `nonlocal_torch.strategies`), ``device``
    and ``dtype``. ``block.strategy`` may be changed at any time.
    Inputs are ``(B, C, *S)`` (``data_format="channels_first"``, the default) or
    ``(B, *S, C)``; tensors in ``torch.channels_last`` memory format are welcome and keep it.
    A new block is the identity (spec initialisation, drawn from torch's RNG).

    Example:
        >>> block = NonLocalBlock(16, spatial_dims=2, subsample=True)
        >>> x = torch.randn(2, 16, 8, 8)
        >>> torch.equal(block(x), x)  # BN gamma = beta = 0 at initialisation
        True
        >>> block.eval()(x, return_attention=True)[1].shape  # (B, N, N'), keys pooled 2x2
        torch.Size([2, 64, 16])
    """

    # Set by `nonlocal_torch.capture_attention` on the instance while it runs: every eager
    # call then hands its (B, N, N') attention to this callable and returns z as usual. A
    # class attribute, so blocks pickled before it existed load, and the normal path costs
    # one attribute read.
    _attention_sink: Callable[[Tensor], None] | None = None

    def __init__(
        self,
        in_channels: int,
        *,
        spatial_dims: int = 2,
        instantiation: str = "embedded_gaussian",
        inter_channels: int | None = None,
        context_channels: int | None = None,
        logit_scale: Any = None,
        subsample: Any = False,
        pool_position: str = "after_projection",
        norm: str | None = "batch",
        norm_eps: float = 1e-5,
        residual: bool = True,
        data_format: str = "channels_first",
        norm_momentum: float | None = 0.1,
        strategy: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.config = NonLocalConfig(
            in_channels=in_channels,
            spatial_dims=spatial_dims,
            instantiation=instantiation,
            inter_channels=inter_channels,
            context_channels=context_channels,
            logit_scale=logit_scale,
            subsample=subsample,
            pool_position=pool_position,
            norm=norm,
            norm_eps=norm_eps,
            residual=residual,
            data_format=data_format,
        )
        cfg = self.config
        self.strategy = check_strategy(strategy, cfg.instantiation)
        factory = {"device": _check_device(device), "dtype": _check_dtype(dtype)}
        norm_momentum = _check_momentum(norm_momentum)
        conv = _CONV[cfg.spatial_dims]
        c, ci, cc = cfg.in_channels, cfg.inter_channels, cfg.context_channels
        # Gaussian dots raw features: no theta/phi modules at all (as in the canonical layout).
        self.theta = None if cfg.instantiation == "gaussian" else conv(c, ci, 1, **factory)
        self.phi = None if cfg.instantiation == "gaussian" else conv(cc, ci, 1, **factory)
        self.g = conv(cc, ci, 1, **factory)
        self.concat = (
            nn.Linear(2 * ci, 1, bias=False, **factory)
            if cfg.instantiation == "concatenation"
            else None
        )
        self.out = conv(ci, c, 1, **factory)
        self.norm = (
            _NORM[cfg.spatial_dims](c, eps=cfg.norm_eps, momentum=norm_momentum, **factory)
            if cfg.norm == "batch"
            else None
        )
        self.reset_parameters()

    @classmethod
    def from_config(cls, config: NonLocalConfig, **kwargs: Any) -> NonLocalBlock:
        """A block for `config`; `kwargs` are the torch extras (norm_momentum, device, dtype).

        Example:
            >>> cfg = NonLocalConfig(8, spatial_dims=3, instantiation="dot_product")
            >>> NonLocalBlock.from_config(cfg).config == cfg
            True
        """
        require_config(config)
        fields = config.to_dict()
        # Always the general class: NonLocal2d etc. fix spatial_dims themselves.
        return NonLocalBlock(fields.pop("in_channels"), **fields, **kwargs)

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
        """A block holding a checkpoint's weights, in evaluation mode.

        `checkpoint` is a state dict or a file (PyTorch, Caffe2 pickle, safetensors,
        ``.npz``; read without running code). `source` names its layout - one of
        `nonlocal_core.SOURCES` - or is None for a file written by `nonlocal_core.save`.
        The block's structure is read from the weights; keyword arguments in `source`'s
        own names fill in what they cannot tell (``instantiation="dot_product"``,
        ``pool_size=[1, 2, 2]``, see `nonlocal_core.profile`), and the torch extras
        ``norm_momentum``, ``strategy``, ``device`` and ``dtype`` go to the block. `block`
        picks one block by module path in a checkpoint that holds several. `data_format`
        (default: the checkpoint's - channels first for every published implementation)
        sets the layout of the block's inputs; the weights do not depend on it.

        Example:
            >>> from nonlocal_core import init_weights, profile
            >>> from nonlocal_core.convert import to_state_dict
            >>> cfg = profile("slowfast", dim=16, dim_inner=8, pool_size=[1, 2, 2])
            >>> state = to_state_dict(init_weights(cfg), "slowfast", cfg, prefix="s3.nl.")
            >>> block = NonLocalBlock.from_pretrained(state, "slowfast", pool_size=[1, 2, 2])
            >>> block.config == cfg, block.training
            (True, False)
        """
        extras = {k: kwargs.pop(k) for k in _TORCH_EXTRAS if k in kwargs}
        found = load_block(checkpoint, source, block, **kwargs)
        config = found.config
        if data_format is not None:  # None: the checkpoint's (published ones: channels first)
            config = config.replace(data_format=data_format)
        module = cls.from_config(config, **extras)
        module.load_canonical_weights(found.weights)
        return module.eval()

    @classmethod
    def from_block(
        cls, other: Any, *, data_format: str = "channels_first", **kwargs: Any
    ) -> NonLocalBlock:
        """A block computing what `other` computes: a block of any backend (a
        ``nonlocal_keras.NonLocalBlock`` layer, another torch block), through its config and
        canonical weights; in evaluation mode, as `from_pretrained`. `kwargs` are the torch
        extras (``dtype``, ``device``, ...).

        Example:
            >>> source = NonLocalBlock(8, spatial_dims=1, instantiation="dot_product")
            >>> copy = NonLocalBlock.from_block(source, dtype=torch.float64)
            >>> copy.config == source.config, copy.g.weight.dtype
            (True, torch.float64)
        """
        config, weights = block_state(other)
        module = cls.from_config(config.replace(data_format=data_format), **kwargs)
        module.load_canonical_weights(weights)
        return module.eval()

    def reset_parameters(self) -> None:
        """The spec's initialisation: N(0, 0.01^2) projections and w_f, zero biases,
        BN gamma = beta = 0 (W_z = 0 instead without a norm), so the block is the identity.

        Example:
            >>> block = NonLocalBlock(4, norm=None)
            >>> block.reset_parameters(); float(block.out.weight.detach().abs().sum())
            0.0
        """
        with torch.no_grad():
            for proj in (self.theta, self.phi, self.g, self.out):
                if proj is not None:
                    nn.init.normal_(proj.weight, 0.0, 0.01)
                    nn.init.zeros_(proj.bias)
            if self.concat is not None:
                nn.init.normal_(self.concat.weight, 0.0, 0.01)
            if self.norm is None:
                nn.init.zeros_(self.out.weight)
            else:
                self.norm.reset_running_stats()
                nn.init.zeros_(self.norm.weight)
                nn.init.zeros_(self.norm.bias)

    # Canonical weights ----------------------------------------------------------------------

    def _canonical_slots(self) -> dict[str, Tensor]:
        """Canonical name -> the live parameter or buffer holding it (shapes differ)."""
        slots: dict[str, Tensor] = {}
        for name in ("theta", "phi", "g"):
            module = getattr(self, name)
            if module is not None:
                slots[f"{name}.weight"], slots[f"{name}.bias"] = module.weight, module.bias
        if self.concat is not None:
            slots["concat.weight"] = self.concat.weight
        slots["out.weight"], slots["out.bias"] = self.out.weight, self.out.bias
        if self.norm is not None:
            for canonical, attr in _NORM_NAMES.items():
                slots[f"norm.{canonical}"] = getattr(self.norm, attr)
        return slots

    def canonical_weights(self) -> dict[str, Tensor]:
        """The weights in the spec's canonical layout (detached views, the block's dtype).

        Example:
            >>> w = NonLocalBlock(8, spatial_dims=3).canonical_weights()
            >>> tuple(w["theta.weight"].shape), tuple(w["norm.gamma"].shape)
            ((4, 8), (8,))
        """
        out = {}
        for name, tensor in self._canonical_slots().items():
            tensor = tensor.detach()
            if tensor.dim() > 2 or name == "concat.weight":
                # (out, in, 1, ...) conv kernels and the (1, 2C') linear map to (out, in) / (2C',).
                tensor = tensor.reshape(tensor.shape[0], -1) if tensor.dim() > 2 else tensor[0]
            out[name] = tensor
        return out

    def load_canonical_weights(self, weights: Mapping[str, Any]) -> None:
        """Copy canonical weights (NumPy arrays or tensors, any float dtype) into the block.

        Projections may also be given as the block's own conv kernels, ``(C', C, 1, 1)``,
        and w_f as ``(1, 2C')``: any shape that differs from the canonical one only by axes
        of length 1. Raises `nonlocal_core.WeightError` (a ValueError) for missing, extra or
        mis-shaped tensors, with the same message as the reference.

        Example:
            >>> from nonlocal_core import NonLocalConfig, random_weights
            >>> block = NonLocalBlock(4, instantiation="concatenation")
            >>> block.load_canonical_weights(random_weights(block.config, seed=1))
            >>> float(block.concat.weight.detach()[0, 0]) != 0.0
            True
        """
        # Everything is read and checked before the first copy: a failed load changes nothing.
        arrays = (
            {name: _host_array(name, value) for name, value in weights.items()}
            if isinstance(weights, Mapping)
            else weights  # check_weights names the type
        )
        arrays = fit_kernels(arrays, self.config)
        check_weights(arrays, self.config)
        slots = self._canonical_slots()
        sources = {
            name: (
                weights[name].detach()
                if isinstance(weights[name], Tensor)
                else torch.as_tensor(np.array(arrays[name]))  # a copy: JAX arrays are read-only
            ).reshape(slot.shape)
            for name, slot in slots.items()
        }
        with torch.no_grad():
            for name, slot in slots.items():
                slot.copy_(sources[name])

    # Forward ----------------------------------------------------------------------------------

    def _check_tensor(self, name: str, t: Any, reference: Tensor) -> None:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device != reference.device:
            raise InputError(
                f"{name} is on device {t.device}, but the block's parameters are on "
                f"{reference.device}: move one of them (.to(device))"
            )
        if name == "key_mask":
            if t.dtype != torch.bool:
                raise InputError(
                    f"key_mask has dtype {t.dtype}: expected torch.bool (True = valid key)"
                )
            return
        if not t.is_floating_point():
            hint = f"; convert it first, e.g. {name}.float()" if not t.is_complex() else ""
            raise InputError(
                f"{name} has dtype {t.dtype}: expected a floating-point tensor{hint} (spec IO-3)"
            )
        autocast = torch.is_autocast_enabled(t.device.type)
        if t.dtype != reference.dtype and not autocast:
            raise InputError(
                f"{name} has dtype {t.dtype}, but the block's parameters are {reference.dtype}: "
                "convert one of them (.to(dtype)), or run under torch.autocast"
            )

    def _pool(self, t: Tensor) -> Tensor:
        window = self.config.subsample
        if window is None:
            return t
        if len(window) == 1 and not isinstance(t, torch.fx.Proxy) and is_tracing(t):
            # max_pool1d reads the length as a concrete int (torch 2.13), which would bake
            # the traced length into a program; the 2-D kernel over a unit height takes the
            # same maxima and keeps it symbolic. Eager calls keep the faster 1-D kernel.
            pooled = F.max_pool2d(t.unsqueeze(-2), (1, *window), stride=(1, *window))
            return pooled.squeeze(-2)
        return _POOL[self.config.spatial_dims](t, kernel_size=window, stride=window)

    def _keys_and_values(self, ctx: Tensor) -> tuple[Tensor, Tensor]:
        """phi (pooled keys) and g (pooled values), channels-first grids."""
        if self.config.pool_position == "before_projection":
            pooled = self._pool(ctx)
            phi = pooled if self.phi is None else self.phi(pooled)
            return phi, self.g(pooled)
        phi = self._pool(ctx) if self.phi is None else self._pool(self.phi(ctx))
        return phi, self._pool(self.g(ctx))

    def _fusable(self, context: Tensor | None) -> bool:
        """theta, phi and g all project x itself (self-attention, pooling after projection)."""
        return (
            context is None
            and self.theta is not None
            and (self.config.subsample is None or self.config.pool_position == "after_projection")
        )

    def _project_together(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """theta(x), pooled phi(x) and g(x) from one 1x1 convolution: x is read once.

        The stacked kernel is rebuilt from the three modules' parameters on every call (a
        few KiB), so state_dict, optimisers and DDP see the usual separate parameters.
        """
        modules = (self.theta, self.phi, self.g)
        weight = torch.cat([m.weight for m in modules])
        bias = torch.cat([m.bias for m in modules])
        out = _CONV_FN[self.config.spatial_dims](x, weight, bias)
        theta, phi, g = out.split([m.out_channels for m in modules], dim=1)
        return theta, self._pool(phi), self._pool(g)

    def _normalise(self, u: Tensor) -> Tensor:
        """BN(u). With one value per channel, batch statistics give u - mean = 0, so
        BN(u) = beta (spec); nn.BatchNorm refuses that case in training, so it is done here,
        and the running statistics (an unbiased variance of one value) are left unchanged.

        A torch.fx graph (u a Proxy) has no sizes to test: it keeps the nn.BatchNorm call,
        which FX tools (QAT conv-BN fusion) look for, and so refuses that case in training.
        """
        if not self.training or isinstance(u, torch.fx.Proxy) or u.numel() != u.shape[1]:
            return self.norm(u)
        shape = (1, -1) + (1,) * (u.dim() - 2)
        centred = u - u.mean(dim=0, keepdim=True)  # zeros, with BN's gradient (zero) for u
        scale = self.norm.weight * self.norm.eps**-0.5
        return centred * scale.view(shape) + self.norm.bias.view(shape)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        key_mask: Tensor | None = None,
        return_attention: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """z, the block's output, shaped like x (and a_ij, (B, N, N'), if `return_attention`).

        Args:
            x: ``(B, C, *S)`` or ``(B, *S, C)`` per ``data_format``.
            context: x^, the features keys and values are read from; defaults to x.
            key_mask: bool, ``(B, *S')`` or ``(B, N')`` over the pooled key grid, True = valid.
            return_attention: also return the attention matrix (materialises B x N x N').

        Compilers and exporters keep every size symbolic (N, N', the key count and the
        strategy are read from tensors, see `nonlocal_torch.strategies.is_tracing`), so one
        ``torch.compile(block, dynamic=True)`` graph or one ``torch.export`` program serves
        all sizes. With ``subsample`` windows w, an exported spatial ``Dim`` needs
        ``min >= 2 * w`` on pooled axes (``min >= 2`` elsewhere): PyTorch specialises
        extents 0 and 1, here the pooled key grid's. Masks export in their grid form
        ``(B, *S')`` (``S'`` as ``Dim``s, e.g. ``h = 2 * hk``); the flat form ``(B, N')``
        relates N' to a product of ``Dim``s, which export cannot express. A
        ``torch.fx.symbolic_trace`` of the block keeps the pairwise step as one call,
        run eagerly (strategy choice included); `context`, `key_mask` and
        `return_attention` left at their defaults are traced as such, and passing them to
        that graph raises.

        Example:
            >>> block = NonLocalBlock(4, spatial_dims=1, instantiation="dot_product")
            >>> block(torch.randn(2, 4, 7), key_mask=torch.ones(2, 7, dtype=torch.bool)).shape
            torch.Size([2, 4, 7])
        """
        cfg = self.config
        fx_graph = any(
            isinstance(t, torch.fx.Proxy) for t in (x, context, key_mask, return_attention)
        )
        if fx_graph:
            context = _fx_default(context, "context", None)
            key_mask = _fx_default(key_mask, "key_mask", None)
            return_attention = _fx_default(return_attention, "return_attention", False)
        return_attention = require_flag(return_attention, "return_attention")
        # An FX graph holds proxies, not attention values, so it is never handed to a sink;
        # nor is an exported program, which must keep the linear strategies (an open
        # capture would otherwise bake the N x N' matrix into it).
        sink = None if fx_graph or _is_exporting() else self._attention_sink
        if not fx_graph:
            # FX proxies have no device, dtype or shape to check until the graph runs.
            # Compilers and exporters do run these checks: on their symbolic sizes a check
            # becomes a guard, or a constraint error that names the offending Dim.
            ref = self.g.weight
            self._check_tensor("x", x, ref)
            if context is not None:
                self._check_tensor("context", context, ref)
            if key_mask is not None:
                self._check_tensor("key_mask", key_mask, ref)
            check_shapes(
                cfg,
                tuple(x.shape),
                None if context is None else tuple(context.shape),
                None if key_mask is None else tuple(key_mask.shape),
            )
        channels_last = cfg.data_format == "channels_last"
        # (B, *S, C) -> (B, C, *S) is a view with channels_last strides: convs take it as is.
        x_cf = _one_channel_strides(x.movedim(-1, 1) if channels_last else x)
        ctx_cf = x_cf if context is None else (context.movedim(-1, 1) if channels_last else context)
        ctx_cf = _one_channel_strides(ctx_cf)

        if self._fusable(context):
            theta, phi, g = self._project_together(x_cf)
        else:
            theta = x_cf if self.theta is None else self.theta(x_cf)
            phi, g = self._keys_and_values(ctx_cf)
        mask = None if key_mask is None else key_mask.reshape(key_mask.shape[0], -1)
        # Contiguous (B, N, C') for eager kernels (an FX graph runs them eagerly too). For
        # compilers and exporters they stay views, so that the copies the softmax makes for
        # SDPA are real copies, not views (see softmax_attention).
        contiguous = fx_graph or not is_tracing(theta)
        out = attend_parts(
            _positions(theta, contiguous),
            _positions(phi, contiguous),
            _positions(g, contiguous),
            cfg.instantiation,
            cfg.scale,
            None if self.concat is None else self.concat.weight[0],
            mask,
            return_attention or sink is not None,
            self.strategy,
        )
        y, attention = out[0], out[1]
        # (B, N, C') -> (B, *S, C') -> (B, C', *S): a view with channels_last strides, the
        # query grid read from x's own shape (symbolic under compilers). For a channels-first
        # x it is made contiguous (C' x N, the narrower side): W_z's conv and the BN then
        # run channels-first, which on CPU is several times faster than channels_last_3d BN,
        # and z needs no copy back into x's format.
        y = y.unflatten(1, x_cf.shape[2:]).movedim(-1, 1)
        if fx_graph:  # x's strides are known when the graph runs
            y = y if channels_last else _in_format_of(y, x)
        elif not channels_last and _memory_format(x) == torch.contiguous_format:
            y = y.contiguous()
        u = self.out(_one_channel_strides(y))
        if self.norm is not None:
            u = self._normalise(u)
        z = u + x_cf if cfg.residual else u
        z = z.movedim(1, -1).contiguous() if channels_last else _in_format_of(z, x)
        if sink is not None:
            sink(attention)
        return (z, attention) if return_attention else z

    def extra_repr(self) -> str:
        cfg = self.config
        parts = [
            f"{cfg.in_channels}",
            f"spatial_dims={cfg.spatial_dims}",
            f"instantiation={cfg.instantiation!r}",
            f"inter_channels={cfg.inter_channels}",
        ]
        if cfg.context_channels != cfg.in_channels:
            parts.append(f"context_channels={cfg.context_channels}")
        if cfg.is_softmax:
            default = " (1/sqrt(d))" if cfg.logit_scale is None else ""
            parts.append(f"scale={cfg.scale:.4g}{default}")
        if cfg.subsample is not None:
            parts += [f"subsample={cfg.subsample}", f"pool_position={cfg.pool_position!r}"]
        parts.append(f"norm={cfg.norm!r}")
        if not cfg.residual:
            parts.append("residual=False")
        if cfg.data_format != "channels_first":
            parts.append(f"data_format={cfg.data_format!r}")
        if self.strategy != "auto":
            parts.append(f"strategy={self.strategy!r}")
        return ", ".join(parts)


# torch.fx copies forward's annotations into a traced graph's code. Postponed evaluation (the
# __future__ import above) leaves them strings, which a pickled GraphModule (torch.save)
# cannot import, so they are evaluated once here.
NonLocalBlock.forward.__annotations__.update(typing.get_type_hints(NonLocalBlock.forward))


def _host_array(name: str, value: Any) -> Any:
    """A tensor as a NumPy array in its own dtype (complex and bool stay so, for
    `check_weights` to reject); anything else as given."""
    if not isinstance(value, Tensor):
        return value
    if value.is_meta:
        raise WeightError(f"weight {name!r} is a meta tensor: it holds no values to load")
    # bfloat16 as float32, which holds it exactly (for the check only).
    return host_values(value)


def _check_device(device: Any) -> torch.device | None:
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(
            f"NonLocalBlock.device={device!r} is invalid: expected a torch.device or a device "
            f"string such as 'cpu' or 'cuda:0' ({exc})"
        ) from None
    try:
        torch.empty(0, device=device)
    # A CPU-only build asserts "Torch not compiled with CUDA enabled".
    except (RuntimeError, AssertionError) as exc:
        raise ValueError(
            f"NonLocalBlock.device={str(device)!r} is not available here: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    return device


def _check_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None:
        return None
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(
            f"NonLocalBlock.dtype={dtype!r} is invalid: expected a floating-point torch.dtype "
            "such as torch.float32 (or None for the default)"
        )
    return dtype


def _check_momentum(momentum: Any) -> float | None:
    # None is nn.BatchNorm's cumulative moving average.
    if momentum is None:
        return None
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(
            f"NonLocalBlock.norm_momentum={momentum!r} is invalid: expected a float in [0, 1] "
            "or None"
        )
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(
            f"NonLocalBlock.norm_momentum={momentum!r} is invalid: expected a float in [0, 1] "
            "(PyTorch convention: the weight of the new batch statistic) or None"
        )
    return float(momentum)


def _positions(grid: Tensor, contiguous: bool = True) -> Tensor:
    """(B, C, *S) -> (B, N, C), positions row-major over S; contiguous unless told not."""
    positions = grid.flatten(2).transpose(1, 2)
    return positions.contiguous() if contiguous else positions


# torch.fx.symbolic_trace keeps calls to these functions as single nodes, run with real
# tensors when the graph runs: the pairwise step (its strategy choice reads sizes, and its
# kernels take the eager path), the memory-format choice (strides), and the check below.
torch.fx.wrap("attend_parts")


def _one_channel_strides(t: Tensor) -> Tensor:
    """A one-channel bfloat16 CPU tensor laid out as its contiguous strides say (a view).

    With one channel, (B, 1, N) is contiguous whatever the stride of the channel axis, and a
    view from channels-last data keeps stride 1 there. PyTorch's CPU bfloat16 1x1
    convolution then takes a channels-last kernel that reads positions in pairs, so a NaN at
    one position also made its neighbour NaN (found by the conformance suite; spec IO-4).
    Other dtypes, devices and traced graphs are left alone.

    Example:
        >>> t = torch.zeros(2, 5, 1, dtype=torch.bfloat16).movedim(-1, 1)
        >>> t.stride(), _one_channel_strides(t).stride()
        ((5, 1, 1), (5, 5, 1))
    """
    if is_tracing(t) or t.shape[1] != 1 or t.dtype != torch.bfloat16:
        return t
    if t.device.type != "cpu" or not t.is_contiguous():
        return t
    strides = [1] * t.dim()
    for axis in range(t.dim() - 2, -1, -1):
        strides[axis] = strides[axis + 1] * t.shape[axis + 1]
    return t.as_strided(t.shape, strides)


@torch.fx.wrap
def _in_format_of(t: Tensor, x: Tensor) -> Tensor:
    """t in x's memory format (`_memory_format`): a no-op where t has it already."""
    return t.contiguous(memory_format=_memory_format(x))


@torch.fx.node.has_side_effect  # kept by dead-code elimination although nothing reads it
@torch.fx.wrap
def _require_default(value: Any, name: str, default: Any) -> None:
    """Raise unless `value` is `default`: the guard of an argument an FX graph traced at its
    default (see `_fx_default`)."""
    if value is default or (not isinstance(value, Tensor) and value == default):
        return
    if isinstance(default, bool):
        got, fix = repr(value), f"trace with concrete_args={{{name!r}: {value!r}}}"
    else:
        got = f"<{type(value).__name__}>" if isinstance(value, Tensor) else repr(value)
        fix = f"trace a module whose forward passes {name} to the block"
    raise ValueError(
        f"{name}={got} was passed to a torch.fx graph of NonLocalBlock traced with "
        f"{name}={default!r}, its default, which the graph holds fixed: {fix}"
    )


def _fx_default(value: Any, name: str, default: Any) -> Any:
    """`default` for an argument that ``torch.fx.symbolic_trace(block)`` made a placeholder
    only because forward declares it, else `value`.

    Tracing the block itself turns every argument of forward into a placeholder, the
    optional ones too, with their defaults recorded. Those are traced at their default,
    and the graph checks at run time that callers leave them there (`_require_default`).
    A proxy for a flag that is not such a placeholder cannot be traced: that is a TypeError.
    """
    if not isinstance(value, torch.fx.Proxy):
        return value
    node = value.node
    if node.op == "placeholder" and node.args == (default,):
        _require_default(value, name, default)
        return default
    if isinstance(default, bool):
        raise TypeError(
            f"{name}={value} is invalid while torch.fx traces NonLocalBlock: expected True "
            f"or False, as a Python bool (pass it in concrete_args)"
        )
    return value


def _memory_format(x: Tensor) -> torch.memory_format:
    """x's memory format: z keeps it (channels_last stays channels_last, contiguous stays so;
    any other strides give a contiguous z)."""
    if x.is_contiguous():  # ambiguous strides (e.g. C == 1 or S all 1): prefer the default
        return torch.contiguous_format
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


class NonLocal1d(NonLocalBlock):
    """`NonLocalBlock` over sequences: x is (B, C, L).

    Example:
        >>> NonLocal1d(8, instantiation="concatenation")(torch.randn(2, 8, 5)).shape
        torch.Size([2, 8, 5])
    """

    def __init__(self, in_channels: int, **kwargs: Any) -> None:
        super().__init__(in_channels, spatial_dims=1, **kwargs)


class NonLocal2d(NonLocalBlock):
    """`NonLocalBlock` over images: x is (B, C, H, W).

    Example:
        >>> NonLocal2d(8, subsample=True)(torch.randn(2, 8, 6, 6)).shape
        torch.Size([2, 8, 6, 6])
    """

    def __init__(self, in_channels: int, **kwargs: Any) -> None:
        super().__init__(in_channels, spatial_dims=2, **kwargs)


class NonLocal3d(NonLocalBlock):
    """`NonLocalBlock` over videos: x is (B, C, T, H, W); ``subsample=True`` pools (1, 2, 2).

    Example:
        >>> NonLocal3d(8, subsample=True)(torch.randn(1, 8, 2, 4, 4)).shape
        torch.Size([1, 8, 2, 4, 4])
    """

    def __init__(self, in_channels: int, **kwargs: Any) -> None:
        super().__init__(in_channels, spatial_dims=3, **kwargs)
