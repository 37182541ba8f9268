"""Independent forward passes of the published non-local implementations, and their state dicts.

Each ``*_forward`` function computes the output of one published implementation from that
implementation's own state dict (its key names, its kernel shapes) and its own constructor
options, with plain ``torch.nn.functional`` ops in float64, step by step in the order that
implementation runs them. They were written from reading each project's source (what is done,
in which order, with which constants), not copied from it, and they never call
``nonlocal_core``: the converter tests compare ``nonlocal_forward`` on converted weights
against these, so the two sides must not share code (only `assert_matches_reference`, the
comparison at the bottom, uses the reference).

What each forward reproduces (the details a converter gets wrong):

- AlexHex7 ``Non-local_pytorch`` (``lib/non_local_<instantiation>.py``): phi and g are convs
  followed by the max pool (kernel 2 / (2, 2) / (1, 2, 2)); no logit scale; Gaussian dots raw
  x with pooled raw x; dot product and concatenation divide by the pooled key count;
  concatenation runs a bias-free ``Conv2d`` over the (B, 2C', N, N') tensor [theta ; phi] and
  a ReLU; ``W`` is a conv then (``bn_layer``) a ``BatchNorm``.
- mmcv ``NonLocal{1,2,3}d``: as AlexHex7, but with the logit divided by sqrt(C') in
  embedded Gaussian only (``use_scale``), C' = max(C // reduction, 1), ``ConvModule`` key
  names, and no bias on ``conv_out`` when ``norm_cfg`` adds a norm (whose eps it carries).
- SlowFast ``Nonlocal`` and PyTorchVideo ``NonLocal``: x is max pooled *before* the phi and g
  convs (theta reads the unpooled x); softmax logits are multiplied by dim_inner ** -0.5;
  dot product divides by the pooled key count; the norm is ``bn`` (SlowFast) or ``norm``
  (PyTorchVideo).
- timm ``NonLocalAttn``: 2D, no pooling, logits multiplied by in_channels ** -0.5 (the input
  width, not the inner width); BatchNorm2d after ``z``.
- Caffe2 ``spacetime_nonlocal`` (video-nonlocal-net): the blobs ``<prefix>_theta_w`` ...;
  x max pooled with kernel = stride = (1, s, s) before phi and g; softmax logits scaled by
  dim_inner ** -0.5 (``USE_SCALE``), else divided by the key count; ``SpatialBN`` in test mode
  with eps 1.0000001e-5.
- "paper": the paper's formulas on the spec's canonical weight names: no logit scale, phi
  and g pooled after their projections.

Every forward takes the state dict (NumPy arrays or torch tensors), a float64 input and the
implementation's options, and returns the output as a float64 NumPy array. BatchNorm runs in
eval mode from the running statistics. ``random_state`` builds a random state dict with
exactly an implementation's key names, shapes and dtypes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nonlocal_conformance.dtypes import Precision
from nonlocal_conformance.suite import assert_within
from nonlocal_conformance.trace import SAFETY, trace_forward
from nonlocal_core import nonlocal_forward

State = dict[str, Any]
Shapes = dict[str, tuple[int, ...]]

# The max pool window each implementation's `sub_sample=True` builds, by spatial rank: time
# (the first of three axes) is never pooled.
SUBSAMPLE_WINDOW = {1: (2,), 2: (2, 2), 3: (1, 2, 2)}
TORCH_BN_EPS = 1e-5  # nn.BatchNorm*d's default, which AlexHex7 and timm never change
CAFFE2_BN_EPS = 1.0000001e-5  # video-nonlocal-net cfg.NONLOCAL.BN_EPSILON
CAFFE2_PREFIX = "nonlocal_conv3_1"  # the first block of res3 in the authors' R50 models


# Small shared pieces ------------------------------------------------------------------------


def as_tensor(value) -> torch.Tensor:
    """A float64 torch tensor of a state-dict entry or an input (NumPy or torch)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64)
    return torch.from_numpy(np.array(value, dtype=np.float64))


def conv(x: torch.Tensor, weight, bias=None) -> torch.Tensor:
    """The 1x1 ``F.conv1d/2d/3d`` matching the rank of `x`, as ``nn.Conv*d`` runs it."""
    op = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[x.dim()]
    return op(x, as_tensor(weight), None if bias is None else as_tensor(bias))


def max_pool(x: torch.Tensor, window) -> torch.Tensor:
    """``nn.MaxPool*d(kernel_size=window)``: stride = kernel, no padding, floor."""
    window = tuple(window)
    op = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(window)]
    return op(x, window, stride=window)


def batch_norm_eval(u: torch.Tensor, state: Mapping, prefix: str, eps: float) -> torch.Tensor:
    """A torch ``BatchNorm*d`` module named `prefix` in eval mode (running statistics)."""
    return F.batch_norm(
        u,
        as_tensor(state[prefix + "running_mean"]),
        as_tensor(state[prefix + "running_var"]),
        as_tensor(state[prefix + "weight"]),
        as_tensor(state[prefix + "bias"]),
        training=False,
        eps=eps,
    )


def kernel(out_channels: int, in_channels: int, spatial_dims: int) -> tuple[int, ...]:
    """The shape of a 1x1 ``Conv{spatial_dims}d`` weight."""
    return (out_channels, in_channels, *(1,) * spatial_dims)


def conv_keys(name: str, out_channels: int, in_channels: int, spatial_dims: int, bias=True):
    """Key -> shape of one ``nn.Conv*d`` registered as `name` (with its bias unless told)."""
    keys = {f"{name}.weight": kernel(out_channels, in_channels, spatial_dims)}
    if bias:
        keys[f"{name}.bias"] = (out_channels,)
    return keys


def bn_keys(name: str, channels: int) -> Shapes:
    """Key -> shape of one torch ``BatchNorm*d`` (``num_batches_tracked`` is a 0-d int64)."""
    keys = {f"{name}.{p}": (channels,) for p in ("weight", "bias", "running_mean", "running_var")}
    keys[f"{name}.num_batches_tracked"] = ()
    return keys


def flat(t: torch.Tensor) -> torch.Tensor:
    """(B, C, *S) -> (B, C, N), positions in row-major order over S."""
    return t.reshape(t.shape[0], t.shape[1], -1)


def to_numpy(z: torch.Tensor) -> np.ndarray:
    """The output as a float64 NumPy array."""
    return z.detach().numpy().astype(np.float64)


# AlexHex7 Non-local_pytorch -------------------------------------------------------------


def alexhex7_inner(in_channels: int, inter_channels: int | None) -> int:
    """C': the caller's, else in_channels // 2, bumped to 1 when that is 0."""
    if inter_channels is not None:
        return inter_channels
    return in_channels // 2 or 1


def alexhex7_keys(
    *,
    in_channels: int,
    inter_channels: int | None = None,
    sub_sample: bool = True,
    bn_layer: bool = True,
    instantiation: str = "embedded_gaussian",
    spatial_dims: int = 2,
) -> Shapes:
    """The state-dict keys and shapes of ``NONLocalBlock{spatial_dims}D`` from the file of
    `instantiation`, in registration order (g, W, theta, phi, concat_project).

    ``sub_sample`` wraps g and phi in ``nn.Sequential(conv, pool)``, so their keys gain a
    ``.0``; Gaussian has no theta or phi module (its phi is the bare pool).
    """
    c, ci, d = in_channels, alexhex7_inner(in_channels, inter_channels), spatial_dims
    wrapped = ".0" if sub_sample else ""
    keys = conv_keys(f"g{wrapped}", ci, c, d)
    if bn_layer:
        keys |= conv_keys("W.0", c, ci, d) | bn_keys("W.1", c)
    else:
        keys |= conv_keys("W", c, ci, d)
    if instantiation != "gaussian":
        keys |= conv_keys("theta", ci, c, d) | conv_keys(f"phi{wrapped}", ci, c, d)
    if instantiation == "concatenation":
        # nn.Conv2d whatever the rank: it runs over the (B, 2C', N, N') pair tensor.
        keys |= conv_keys("concat_project.0", 1, 2 * ci, 2, bias=False)
    return keys


def alexhex7_forward(
    state: Mapping,
    x,
    *,
    in_channels: int,
    inter_channels: int | None = None,
    sub_sample: bool = True,
    bn_layer: bool = True,
    instantiation: str = "embedded_gaussian",
    spatial_dims: int | None = None,
    prefix: str = "",
) -> np.ndarray:
    """AlexHex7's ``_NonLocalBlockND.forward`` for the file of `instantiation`."""
    x = as_tensor(x)
    d = x.dim() - 2
    assert spatial_dims in (None, d), (spatial_dims, x.shape)
    ci = alexhex7_inner(in_channels, inter_channels)
    window = SUBSAMPLE_WINDOW[d]
    s = lambda name: state[prefix + name]  # noqa: E731

    def pooled_conv(name: str) -> torch.Tensor:
        # g and phi are Sequential(conv, pool): the pool reads the projection.
        if sub_sample:
            return max_pool(conv(x, s(f"{name}.0.weight"), s(f"{name}.0.bias")), window)
        return conv(x, s(f"{name}.weight"), s(f"{name}.bias"))

    g_x = flat(pooled_conv("g")).transpose(1, 2)  # (B, N', C')
    if instantiation == "gaussian":
        theta_x = flat(x).transpose(1, 2)  # raw x: (B, N, C)
        phi_x = flat(max_pool(x, window) if sub_sample else x)  # raw (pooled) x: (B, C, N')
        f = torch.softmax(theta_x @ phi_x, dim=-1)  # no logit scale
    elif instantiation == "concatenation":
        theta_x = flat(conv(x, s("theta.weight"), s("theta.bias"))).unsqueeze(-1)  # (B,C',N,1)
        phi_x = flat(pooled_conv("phi")).unsqueeze(-2)  # (B, C', 1, N')
        n, n_keys = theta_x.shape[2], phi_x.shape[3]
        pairs = torch.cat([theta_x.repeat(1, 1, 1, n_keys), phi_x.repeat(1, 1, n, 1)], dim=1)
        f = F.relu(F.conv2d(pairs, as_tensor(s("concat_project.0.weight"))))  # (B, 1, N, N')
        f = f.reshape(f.shape[0], n, n_keys) / n_keys
    else:
        theta_x = flat(conv(x, s("theta.weight"), s("theta.bias"))).transpose(1, 2)
        phi_x = flat(pooled_conv("phi"))
        f = theta_x @ phi_x
        if instantiation == "embedded_gaussian":
            f = torch.softmax(f, dim=-1)  # no logit scale
        else:
            assert instantiation == "dot_product", instantiation
            f = f / f.shape[-1]
    y = (f @ g_x).transpose(1, 2).reshape(x.shape[0], ci, *x.shape[2:])
    if bn_layer:
        w_y = conv(y, s("W.0.weight"), s("W.0.bias"))
        w_y = batch_norm_eval(w_y, state, prefix + "W.1.", TORCH_BN_EPS)
    else:
        w_y = conv(y, s("W.weight"), s("W.bias"))
    return to_numpy(w_y + x)


# mmcv NonLocal1d / NonLocal2d / NonLocal3d ------------------------------------------------


def mmcv_inner(in_channels: int, reduction: int) -> int:
    """C' = max(in_channels // reduction, 1)."""
    return max(in_channels // reduction, 1)


def mmcv_keys(
    *,
    in_channels: int,
    reduction: int = 2,
    norm_cfg: Mapping | None = None,
    mode: str = "embedded_gaussian",
    sub_sample: bool = False,
    spatial_dims: int = 2,
    **_unused,
) -> Shapes:
    """The state-dict keys and shapes of ``mmcv.cnn.NonLocal{spatial_dims}d``.

    Every projection is a ``ConvModule`` (``<name>.conv.*``); ``sub_sample`` wraps g and phi
    in ``nn.Sequential(ConvModule, pool)``; ``conv_out`` has ``bn.*`` and no conv bias when
    `norm_cfg` is given (ConvModule's ``bias="auto"``); ``concat_project`` is a 2D ConvModule
    without bias whatever the rank.
    """
    c, ci, d = in_channels, mmcv_inner(in_channels, reduction), spatial_dims
    wrapped = ".0" if sub_sample else ""
    keys = conv_keys(f"g{wrapped}.conv", ci, c, d)
    keys |= conv_keys("conv_out.conv", c, ci, d, bias=norm_cfg is None)
    if norm_cfg is not None:
        keys |= bn_keys("conv_out.bn", c)
    if mode != "gaussian":
        keys |= conv_keys("theta.conv", ci, c, d) | conv_keys(f"phi{wrapped}.conv", ci, c, d)
    if mode == "concatenation":
        keys |= conv_keys("concat_project.conv", 1, 2 * ci, 2, bias=False)
    return keys


def mmcv_forward(
    state: Mapping,
    x,
    *,
    in_channels: int,
    reduction: int = 2,
    use_scale: bool = True,
    norm_cfg: Mapping | None = None,
    mode: str = "embedded_gaussian",
    sub_sample: bool = False,
    spatial_dims: int | None = None,
    prefix: str = "",
    **_unused,  # conv_cfg, std, zeros_init: no effect on the forward pass
) -> np.ndarray:
    """mmcv's ``_NonLocalNd.forward`` (with ``NonLocal{1,2,3}d``'s sub_sample pools)."""
    x = as_tensor(x)
    d = x.dim() - 2
    assert spatial_dims in (None, d), (spatial_dims, x.shape)
    ci = mmcv_inner(in_channels, reduction)
    window = SUBSAMPLE_WINDOW[d]
    s = lambda name: state[prefix + name]  # noqa: E731

    def module(name: str, *, pooled: bool) -> torch.Tensor:
        if pooled and sub_sample:
            out = conv(x, s(f"{name}.0.conv.weight"), s(f"{name}.0.conv.bias"))
            return max_pool(out, window)
        return conv(x, s(f"{name}.conv.weight"), s(f"{name}.conv.bias"))

    g_x = flat(module("g", pooled=True)).transpose(1, 2)  # (B, N', C')
    if mode == "gaussian":
        theta_x = flat(x).transpose(1, 2)
        phi_x = flat(max_pool(x, window) if sub_sample else x)  # the phi "module" is the pool
        pairwise = torch.softmax(theta_x @ phi_x, dim=-1)  # use_scale does not apply here
    elif mode == "concatenation":
        theta_x = flat(module("theta", pooled=False)).unsqueeze(-1)
        phi_x = flat(module("phi", pooled=True)).unsqueeze(-2)
        n, n_keys = theta_x.shape[2], phi_x.shape[3]
        pairs = torch.cat([theta_x.repeat(1, 1, 1, n_keys), phi_x.repeat(1, 1, n, 1)], dim=1)
        pairwise = F.relu(F.conv2d(pairs, as_tensor(s("concat_project.conv.weight"))))
        pairwise = pairwise.reshape(pairwise.shape[0], n, n_keys) / n_keys
    else:
        theta_x = flat(module("theta", pooled=False)).transpose(1, 2)
        phi_x = flat(module("phi", pooled=True))
        pairwise = theta_x @ phi_x
        if mode == "embedded_gaussian":
            if use_scale:
                # mmcv divides by sqrt(C') (theta_x.shape[-1]); it does not multiply.
                pairwise = pairwise / theta_x.shape[-1] ** 0.5
            pairwise = torch.softmax(pairwise, dim=-1)
        else:
            assert mode == "dot_product", mode
            pairwise = pairwise / pairwise.shape[-1]
    y = (pairwise @ g_x).transpose(1, 2).reshape(x.shape[0], ci, *x.shape[2:])
    if norm_cfg is None:
        out = conv(y, s("conv_out.conv.weight"), s("conv_out.conv.bias"))
    else:
        out = conv(y, s("conv_out.conv.weight"))  # bias="auto": none before a norm
        eps = norm_cfg.get("eps", TORCH_BN_EPS)
        out = batch_norm_eval(out, state, prefix + "conv_out.bn.", eps)
    return to_numpy(x + out)


# SlowFast Nonlocal and PyTorchVideo NonLocal --------------------------------------------


def _video_keys(dim: int, dim_inner: int, norm: str | None) -> Shapes:
    """conv_theta, conv_phi, conv_g, conv_out (Conv3d with bias) and the norm named `norm`."""
    keys: Shapes = {}
    for name in ("conv_theta", "conv_phi", "conv_g"):
        keys |= conv_keys(name, dim_inner, dim, 3)
    keys |= conv_keys("conv_out", dim, dim_inner, 3)
    if norm is not None:
        keys |= bn_keys(norm, dim)
    return keys


def _video_forward(
    state: Mapping,
    x,
    *,
    dim_inner: int,
    pool_size,
    instantiation: str,
    norm: str | None,
    norm_eps: float,
    prefix: str,
) -> np.ndarray:
    """The forward pass SlowFast and PyTorchVideo share (they differ in names only)."""
    x = as_tensor(x)
    s = lambda name: state[prefix + name]  # noqa: E731
    batch, _, t, h, w = x.shape
    theta = conv(x, s("conv_theta.weight"), s("conv_theta.bias"))  # reads the unpooled x
    if pool_size is not None and any(k > 1 for k in pool_size):
        x_keys = max_pool(x, pool_size)  # pool x itself, before phi and g
    else:
        x_keys = x
    phi = flat(conv(x_keys, s("conv_phi.weight"), s("conv_phi.bias")))
    g = flat(conv(x_keys, s("conv_g.weight"), s("conv_g.bias")))
    theta_phi = torch.einsum("nct,ncp->ntp", flat(theta), phi)
    if instantiation == "softmax":
        theta_phi = torch.softmax(theta_phi * dim_inner**-0.5, dim=2)
    else:
        assert instantiation == "dot_product", instantiation
        theta_phi = theta_phi / theta_phi.shape[2]
    y = torch.einsum("ntg,ncg->nct", theta_phi, g).reshape(batch, dim_inner, t, h, w)
    p = conv(y, s("conv_out.weight"), s("conv_out.bias"))
    if norm is not None:
        p = batch_norm_eval(p, state, f"{prefix}{norm}.", norm_eps)
    return to_numpy(x + p)


def slowfast_keys(*, dim: int, dim_inner: int, norm_type: str = "batchnorm", **_unused) -> Shapes:
    """The state-dict keys and shapes of SlowFast's ``Nonlocal`` (BN named ``bn``)."""
    return _video_keys(dim, dim_inner, "bn" if norm_type == "batchnorm" else None)


def slowfast_forward(
    state: Mapping,
    x,
    *,
    dim: int,
    dim_inner: int,
    pool_size=None,
    instantiation: str = "softmax",
    norm_type: str = "batchnorm",
    norm_eps: float = 1e-5,
    prefix: str = "",
    **_unused,  # norm_momentum, zero_init_*: no effect on an eval forward
) -> np.ndarray:
    """SlowFast's ``Nonlocal.forward`` (``slowfast/models/nonlocal_helper.py``)."""
    assert norm_type in ("batchnorm", "none"), norm_type
    assert as_tensor(x).shape[1] == dim
    return _video_forward(
        state,
        x,
        dim_inner=dim_inner,
        pool_size=pool_size,
        instantiation=instantiation,
        norm="bn" if norm_type == "batchnorm" else None,
        norm_eps=norm_eps,
        prefix=prefix,
    )


def pytorchvideo_keys(*, dim_in: int, dim_inner: int, norm=torch.nn.BatchNorm3d, **_unused):
    """The state-dict keys and shapes of ``create_nonlocal``'s module (norm named ``norm``)."""
    return _video_keys(dim_in, dim_inner, None if norm is None else "norm")


def pytorchvideo_forward(
    state: Mapping,
    x,
    *,
    dim_in: int,
    dim_inner: int,
    pool_size=(1, 1, 1),
    instantiation: str = "softmax",
    norm=torch.nn.BatchNorm3d,
    norm_eps: float = 1e-5,
    prefix: str = "",
    **_unused,  # norm_momentum: no effect on an eval forward
) -> np.ndarray:
    """PyTorchVideo's ``NonLocal.forward`` as ``create_nonlocal`` builds it."""
    assert as_tensor(x).shape[1] == dim_in
    return _video_forward(
        state,
        x,
        dim_inner=dim_inner,
        pool_size=(1, 1, 1) if pool_size is None else pool_size,
        instantiation=instantiation,
        norm=None if norm is None else "norm",
        norm_eps=norm_eps,
        prefix=prefix,
    )


# timm NonLocalAttn ----------------------------------------------------------------------


def timm_make_divisible(v: float, divisor: int = 8, min_value=None, round_limit=0.9) -> int:
    """timm's channel rounding: nearest multiple of `divisor`, at least `divisor`, and never
    more than 10% below `v`."""
    min_value = min_value or divisor
    rounded = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * v else rounded


def timm_inner(in_channels: int, rd_ratio=1 / 8, rd_channels=None, rd_divisor=8) -> int:
    """``NonLocalAttn``'s inner width."""
    if rd_channels is not None:
        return rd_channels
    return timm_make_divisible(in_channels * rd_ratio, divisor=rd_divisor)


def timm_keys(*, in_channels: int, rd_ratio=1 / 8, rd_channels=None, rd_divisor=8, **_unused):
    """The state-dict keys and shapes of timm's ``NonLocalAttn`` (t, p, g, z, norm)."""
    c, ci = in_channels, timm_inner(in_channels, rd_ratio, rd_channels, rd_divisor)
    keys = conv_keys("t", ci, c, 2) | conv_keys("p", ci, c, 2) | conv_keys("g", ci, c, 2)
    return keys | conv_keys("z", c, ci, 2) | bn_keys("norm", c)


def timm_forward(
    state: Mapping,
    x,
    *,
    in_channels: int,
    use_scale: bool = True,
    rd_ratio=1 / 8,
    rd_channels=None,
    rd_divisor=8,
    prefix: str = "",
) -> np.ndarray:
    """timm's ``NonLocalAttn.forward``."""
    x = as_tensor(x)
    s = lambda name: state[prefix + name]  # noqa: E731
    scale = in_channels**-0.5 if use_scale else 1.0  # the input width, not rd_channels
    batch, _, h, w = x.shape
    t = flat(conv(x, s("t.weight"), s("t.bias"))).transpose(1, 2)
    p = flat(conv(x, s("p.weight"), s("p.bias")))
    g = flat(conv(x, s("g.weight"), s("g.bias"))).transpose(1, 2)
    att = torch.softmax(torch.bmm(t, p) * scale, dim=2)
    y = torch.bmm(att, g).transpose(1, 2).reshape(batch, -1, h, w)
    z = conv(y, s("z.weight"), s("z.bias"))
    return to_numpy(batch_norm_eval(z, state, prefix + "norm.", TORCH_BN_EPS) + x)


# Caffe2 video-nonlocal-net -----------------------------------------------------------------


def caffe2_keys(*, dim_in: int, dim_inner: int, USE_BN: bool = True, **_unused) -> Shapes:
    """The blob names (after ``<prefix>``) and shapes ``spacetime_nonlocal`` creates."""
    keys: Shapes = {}
    for name in ("theta", "phi", "g"):
        keys[f"_{name}_w"] = (dim_inner, dim_in, 1, 1, 1)
        keys[f"_{name}_b"] = (dim_inner,)
    keys["_out_w"] = (dim_in, dim_inner, 1, 1, 1)
    keys["_out_b"] = (dim_in,)
    if USE_BN:
        # SpatialBN's scale, bias, running mean and running variance ("riv").
        keys |= {f"_bn_{p}": (dim_in,) for p in ("s", "b", "rm", "riv")}
    return keys


def caffe2_forward(
    blobs: Mapping,
    x,
    *,
    dim_in: int,
    dim_inner: int,
    dim_out: int | None = None,
    max_pool_stride: int = 2,
    USE_SOFTMAX: bool = True,  # the cfg.NONLOCAL names, as written there
    USE_SCALE: bool = True,
    USE_MAXPOOL: bool = True,
    USE_BN: bool = True,
    BN_EPSILON: float = CAFFE2_BN_EPS,
    prefix: str = CAFFE2_PREFIX,
    **_unused,  # USE_AFFINE/NO_BIAS must be False (the blobs above exist); init options
) -> np.ndarray:
    """``add_nonlocal`` = input + ``spacetime_nonlocal`` in test mode."""
    assert dim_out in (None, dim_in), "the residual sum needs dim_out == dim_in"
    x = as_tensor(x)
    b = lambda name: blobs[prefix + name]  # noqa: E731
    theta = conv(x, b("_theta_w"), b("_theta_b"))
    window = (1, max_pool_stride, max_pool_stride)
    pooled = max_pool(x, window) if USE_MAXPOOL else x  # x is pooled, then projected
    phi = conv(pooled, b("_phi_w"), b("_phi_b"))
    g = conv(pooled, b("_g_w"), b("_g_b"))
    theta, phi, g = flat(theta), flat(phi), flat(g)  # Reshape to (B, C', -1)
    theta_phi = torch.bmm(theta.transpose(1, 2), phi)  # BatchMatMul trans_a: (B, N, N')
    if USE_SOFTMAX:
        if USE_SCALE:
            theta_phi = theta_phi * dim_inner**-0.5
        p = torch.softmax(theta_phi, dim=2)
    else:
        # The denominator is ReduceBackSum of ones: the key count, the same for every row.
        p = theta_phi / theta_phi.shape[2]
    t = torch.bmm(g, p.transpose(1, 2))  # BatchMatMul trans_b: (B, C', N)
    out = conv(t.reshape(theta.shape[0], dim_inner, *x.shape[2:]), b("_out_w"), b("_out_b"))
    if USE_BN:
        # SpatialBN, is_test: (u - rm) / sqrt(riv + eps) * s + b.
        shape = (1, -1, 1, 1, 1)
        mean, var = as_tensor(b("_bn_rm")).reshape(shape), as_tensor(b("_bn_riv")).reshape(shape)
        scale, bias = as_tensor(b("_bn_s")).reshape(shape), as_tensor(b("_bn_b")).reshape(shape)
        out = (out - mean) / torch.sqrt(var + BN_EPSILON) * scale + bias
    return to_numpy(x + out)


# The paper, on the spec's canonical names --------------------------------------------------


def paper_keys(
    *,
    in_channels: int,
    spatial_dims: int = 2,
    instantiation: str = "embedded_gaussian",
    inter_channels: int | None = None,
    subsample=False,
    norm: str | None = "batch",
) -> Shapes:
    """The spec's canonical names and shapes (section 5), listed here independently."""
    c, ci = in_channels, inter_channels or max(in_channels // 2, 1)
    keys: Shapes = {}
    if instantiation != "gaussian":
        keys |= {"theta.weight": (ci, c), "theta.bias": (ci,)}
        keys |= {"phi.weight": (ci, c), "phi.bias": (ci,)}
    keys |= {"g.weight": (ci, c), "g.bias": (ci,)}
    if instantiation == "concatenation":
        keys["concat.weight"] = (2 * ci,)
    keys |= {"out.weight": (c, ci), "out.bias": (c,)}
    if norm == "batch":
        keys |= {f"norm.{p}": (c,) for p in ("gamma", "beta", "running_mean", "running_var")}
    return keys


def paper_forward(
    state: Mapping,
    x,
    *,
    in_channels: int,
    spatial_dims: int = 2,
    instantiation: str = "embedded_gaussian",
    inter_channels: int | None = None,
    subsample=False,
    norm: str | None = "batch",
    prefix: str = "",
) -> np.ndarray:
    """The paper's section 3 formulas: f without a scale, phi and g max pooled after their
    projections ("adding max pooling after phi and g"), BN after W_z, residual."""
    x = as_tensor(x)
    d = x.dim() - 2
    assert spatial_dims == d and x.shape[1] == in_channels
    s = lambda name: as_tensor(state[prefix + name])  # noqa: E731
    window = (
        None
        if subsample in (False, None)
        else SUBSAMPLE_WINDOW[d]
        if subsample is True
        else tuple(subsample)
        if isinstance(subsample, tuple | list)
        else (subsample,) * d
    )

    def project(t: torch.Tensor, name: str) -> torch.Tensor:
        w = s(f"{name}.weight")
        return conv(t, w.reshape(*w.shape, *(1,) * d), s(f"{name}.bias"))

    def pooled(t: torch.Tensor) -> torch.Tensor:
        return t if window is None else max_pool(t, window)

    g = flat(pooled(project(x, "g"))).transpose(1, 2)
    if instantiation == "gaussian":
        theta, phi = flat(x).transpose(1, 2), flat(pooled(x))
    else:
        theta = flat(project(x, "theta")).transpose(1, 2)
        phi = flat(pooled(project(x, "phi")))
    if instantiation == "concatenation":
        w_f = s("concat.weight")
        half = w_f.shape[0] // 2
        # w_f . [theta_i ; phi_j], the theta half first, then ReLU, over N'.
        f = F.relu((theta @ w_f[:half])[:, :, None] + (phi.transpose(1, 2) @ w_f[half:])[:, None])
        a = f / f.shape[-1]
    elif instantiation == "dot_product":
        f = theta @ phi
        a = f / f.shape[-1]
    else:
        a = torch.softmax(theta @ phi, dim=-1)  # f = exp(theta . phi), C = sum_j f
    y = (a @ g).transpose(1, 2).reshape(x.shape[0], -1, *x.shape[2:])
    w_z = s("out.weight")
    u = conv(y, w_z.reshape(*w_z.shape, *(1,) * d), s("out.bias"))
    if norm == "batch":
        u = F.batch_norm(
            u,
            s("norm.running_mean"),
            s("norm.running_var"),
            s("norm.gamma"),
            s("norm.beta"),
            training=False,
            eps=TORCH_BN_EPS,
        )
    return to_numpy(u + x)


# The registry and the random state dicts -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One published implementation: its key listing and its forward pass.

    ``keys(**options)`` gives the names and shapes of its state dict for those constructor
    options; ``forward(state, x, **options, prefix=...)`` its output. A prefix is prepended
    as it is: "backbone.nl." for a torch module path, "nonlocal_conv3_1" for Caffe2 blobs
    (whose names here start with "_").
    """

    source: str
    keys: Callable[..., Shapes]
    forward: Callable[..., np.ndarray]


IMPLEMENTATIONS = {
    "paper": Implementation("paper", paper_keys, paper_forward),
    "alexhex7": Implementation("alexhex7", alexhex7_keys, alexhex7_forward),
    "mmcv": Implementation("mmcv", mmcv_keys, mmcv_forward),
    "slowfast": Implementation("slowfast", slowfast_keys, slowfast_forward),
    "pytorchvideo": Implementation("pytorchvideo", pytorchvideo_keys, pytorchvideo_forward),
    "timm": Implementation("timm", timm_keys, timm_forward),
    "caffe2": Implementation("caffe2", caffe2_keys, caffe2_forward),
}


def block_keys(source: str, options: Mapping, prefix: str = "") -> Shapes:
    """Full key -> shape of one block of `source` built with `options`, under `prefix`."""
    keys = IMPLEMENTATIONS[source].keys(**options)
    return {prefix + name: shape for name, shape in keys.items()}


def forward(source: str, state: Mapping, x, options: Mapping, prefix: str = "") -> np.ndarray:
    """The output of `source`'s block stored under `prefix` in `state`.

    Caffe2's blob prefix defaults to ``CAFFE2_PREFIX`` (its names have no module prefix).
    """
    if source == "caffe2" and not prefix:
        prefix = CAFFE2_PREFIX
    return IMPLEMENTATIONS[source].forward(state, x, **options, prefix=prefix)


def random_tensor(name: str, shape: tuple[int, ...], rng: np.random.Generator, dtype):
    """A random entry for the state-dict key `name`: a variance is positive, a BN count is a
    0-d int64 zero (what a converter writes back), a kernel is scaled by its fan-in so the
    block's activations stay O(1), everything else is O(1) with random signs."""
    if name.endswith("num_batches_tracked"):
        return np.array(0, dtype=np.int64)
    if name.endswith(("running_var", "_bn_riv")):
        return rng.uniform(0.5, 1.5, size=shape).astype(dtype)
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        return rng.normal(0.0, 0.5 / math.sqrt(fan_in), size=shape).astype(dtype)
    if name.endswith("concat.weight"):
        return rng.normal(0.0, 0.5 / math.sqrt(shape[0] / 2), size=shape).astype(dtype)
    return rng.normal(0.0, 0.5, size=shape).astype(dtype)


def random_state(
    source: str,
    options: Mapping,
    *,
    seed: int = 0,
    prefix: str | None = None,
    dtype=np.float64,
) -> State:
    """A random state dict of `source`'s block with exactly that implementation's key names
    (under `prefix`; Caffe2 defaults to ``CAFFE2_PREFIX``), shapes and dtypes (`dtype` for
    floating tensors, int64 for ``num_batches_tracked``), as NumPy arrays."""
    if prefix is None:
        prefix = CAFFE2_PREFIX if source == "caffe2" else ""
    rng = np.random.default_rng(seed)
    return {
        name: random_tensor(name, shape, rng, dtype)
        for name, shape in block_keys(source, options, prefix).items()
    }


def to_torch_state(state: Mapping) -> dict[str, torch.Tensor]:
    """NumPy state-dict entries as torch tensors of the same dtype (for ``load_state_dict``)."""
    return {name: torch.from_numpy(np.array(value)) for name, value in state.items()}


def randomise_module(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter and BN statistic of a real module with random values (see
    `random_tensor`), so that no converter mistake hides behind a zero or identity init."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            if tensor.dtype.is_floating_point:
                value = random_tensor(name, tuple(tensor.shape), rng, np.float64)
                tensor.copy_(torch.from_numpy(value))
    return module


# The comparison --------------------------------------------------------------------------------


def assert_matches_reference(actual, x, weights, config, what: str) -> None:
    """Fail unless `actual` is ``nonlocal_forward(x, weights, config)`` up to float64 rounding.

    The bound is the project's tolerance model (``trace_forward`` at float64, times
    ``SAFETY``): the published implementations round differently from the reference (mmcv
    divides logits by sqrt(C') where the reference multiplies by its inverse, the
    concatenation runs one 2C'-long dot product where the reference adds two C'-long ones,
    einsum and conv reduce in their own orders), and the model bounds exactly those
    differences, per output entry, from the magnitudes involved - where a fixed rtol/atol
    would be too loose for small entries or too tight for cancelling ones.
    """
    expected = nonlocal_forward(x, weights, config)
    trace = trace_forward(x, weights, config, precision=Precision.default("float64"))
    assert_within(np.asarray(actual), expected, SAFETY * trace.err_z, what)


def assert_same_state(actual: dict, expected: dict, what: str) -> None:
    """Same keys, and per key the same shape, dtype and bytes (so -0.0 and NaN payloads
    count): what ``load_state_dict(strict=True)`` and a checkpoint diff would see."""
    assert sorted(actual) == sorted(expected), f"{what}: keys differ"
    for key, value in expected.items():
        got = np.asarray(actual[key])
        value = np.asarray(value)
        assert got.shape == value.shape, f"{what}: {key} has shape {got.shape}, not {value.shape}"
        assert got.dtype == value.dtype, f"{what}: {key} has dtype {got.dtype}, not {value.dtype}"
        assert got.tobytes() == value.tobytes(), f"{what}: {key} differs"
