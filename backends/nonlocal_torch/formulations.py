"""The published formulations of the non-local block, re-implemented on our block's weights.

Each function is the forward pass of one formulation that earlier implementations ship,
written here from the paper and from what `shared/notes/anchors.md` records about those
projects (no code of theirs is copied: their licenses differ). All of them build the
N x N' pairwise matrix, and the concatenation even a B x 2C' x N x N' tensor, the way those
projects do; `nonlocal_torch.sidebyside` times them against `NonLocalBlock`.

Every function takes a `NonLocalBlock` and ``x`` (B, C, *S) and reads the block's own
modules (``block.theta``, ``phi``, ``g``, ``out``, ``norm``, ``concat``), so it computes the
same function as ``block(x)`` with the same parameters, in training mode (batch statistics)
as in evaluation mode. Where a project's semantics differ from our default, the matching
block is built with the corresponding config (SlowFast pools x before the phi/g convs:
``pool_position="before_projection"``); a formulation refuses a block it would not match.

Example:
    >>> from nonlocal_core import random_weights
    >>> block = NonLocalBlock(8, spatial_dims=3, subsample=True, dtype=torch.float64).eval()
    >>> block.load_canonical_weights(random_weights(block.config, seed=0))
    >>> x = torch.randn(2, 8, 2, 4, 6, dtype=torch.float64)
    >>> bool(torch.allclose(alexhex7_embedded(block, x), block(x), rtol=1e-12, atol=1e-12))
    True
    >>> applicable(block)
    ['alexhex7_embedded']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .block import NonLocalBlock

_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
AFTER, BEFORE = "after_projection", "before_projection"


# Shared pieces ---------------------------------------------------------------------------------


def _check(block: NonLocalBlock, x: Tensor, name: str, instantiation: str, pool: str | None):
    """ValueError/TypeError unless `name` computes ``block(x)`` for this block and input."""
    if not isinstance(block, NonLocalBlock):
        raise TypeError(f"{name}: block must be a NonLocalBlock, got {type(block).__name__}")
    cfg = block.config
    if cfg.instantiation != instantiation:
        raise ValueError(
            f"{name}: block.config.instantiation={cfg.instantiation!r}: expected {instantiation!r}"
        )
    if pool is not None and cfg.subsample is not None and cfg.pool_position != pool:
        raise ValueError(
            f"{name}: block.config.pool_position={cfg.pool_position!r}: expected {pool!r} "
            "(or no subsampling)"
        )
    if cfg.data_format != "channels_first" or cfg.context_channels != cfg.in_channels:
        raise ValueError(
            f"{name}: the published formulations are self-attention on channels_first input: "
            f"expected data_format='channels_first' and context_channels == in_channels, got "
            f"{cfg.data_format!r} and {cfg.context_channels} != {cfg.in_channels}"
        )
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != cfg.spatial_dims + 2 or x.shape[1] != cfg.in_channels:
        raise ValueError(
            f"{name}: x has shape {tuple(x.shape)}: expected (B, {cfg.in_channels}, "
            f"{cfg.spatial_dims} spatial axes)"
        )


def _pool(block: NonLocalBlock, t: Tensor) -> Tensor:
    """Max pooling with kernel = stride = the subsampling window, floor mode (as published)."""
    window = block.config.subsample
    if window is None:
        return t
    return _POOL[block.config.spatial_dims](t, kernel_size=window, stride=window)


def _keys_and_values(block: NonLocalBlock, x: Tensor) -> tuple[Tensor, Tensor]:
    """phi and g grids (B, C', *S'), pooled where the block's config says."""
    if block.config.pool_position == BEFORE:
        pooled = _pool(block, x)  # SlowFast / PyTorchVideo / Caffe2: pool x, then the convs
        return block.phi(pooled), block.g(pooled)
    return _pool(block, block.phi(x)), _pool(block, block.g(x))  # AlexHex7 / mmcv


def _output(block: NonLocalBlock, y: Tensor, x: Tensor) -> Tensor:
    """z = BN(W_z y) + x from y (B, C', N): the W_z conv, the norm, the residual."""
    y = y.reshape(y.shape[0], y.shape[1], *x.shape[2:])
    u = block.out(y)
    if block.norm is not None:
        u = block.norm(u)
    return u + x if block.config.residual else u


# The formulations ------------------------------------------------------------------------------


def alexhex7_embedded(block: NonLocalBlock, x: Tensor) -> Tensor:
    """Embedded Gaussian as AlexHex7 Non-local_pytorch and mmcv compute it.

    theta, phi, g are three 1x1 convs; phi and g are max-pooled after their convs. Then
    theta (B, N, C'), phi (B, C', N'), f = theta @ phi (B, N, N') materialised, softmax over
    keys, y = f @ g (B, N, C'), transposed back to (B, C', *S), W_z conv, BN, residual.

    Logit scale: AlexHex7 has none (build the block with ``logit_scale=False`` for that);
    mmcv multiplies by C'^-1/2 (``use_scale``), our default. The block's ``config.scale`` is
    used so the output is the block's.
    """
    _check(block, x, "alexhex7_embedded", "embedded_gaussian", AFTER)
    batch, ci = x.shape[0], block.config.inter_channels
    theta = block.theta(x).reshape(batch, ci, -1).permute(0, 2, 1)  # (B, N, C'), a strided view
    phi, g = _keys_and_values(block, x)
    phi = phi.reshape(batch, ci, -1)  # (B, C', N')
    g = g.reshape(batch, ci, -1).permute(0, 2, 1)  # (B, N', C')
    f = torch.matmul(theta, phi)  # (B, N, N')
    f = f * block.config.scale  # absent in AlexHex7 (scale 1)
    attention = F.softmax(f, dim=-1)
    y = torch.matmul(attention, g)  # (B, N, C')
    return _output(block, y.permute(0, 2, 1).contiguous(), x)


def slowfast_embedded(block: NonLocalBlock, x: Tensor) -> Tensor:
    """Embedded Gaussian ("softmax") as SlowFast and PyTorchVideo compute it.

    x is max-pooled BEFORE the phi and g convs (theta sees the full grid); theta, phi, g are
    flattened to (B, C', N) / (B, C', N'); the logits theta^T phi (B, N, N') are formed by an
    einsum over channels, scaled by C'^-1/2, softmaxed over keys; y = einsum with g, back to
    (B, C', *S), W_z conv, BN, residual. Needs ``pool_position="before_projection"`` when the
    block subsamples.
    """
    _check(block, x, "slowfast_embedded", "embedded_gaussian", BEFORE)
    batch, ci = x.shape[0], block.config.inter_channels
    theta = block.theta(x).reshape(batch, ci, -1)  # (B, C', N)
    pooled = _pool(block, x)
    phi = block.phi(pooled).reshape(batch, ci, -1)  # (B, C', N')
    g = block.g(pooled).reshape(batch, ci, -1)  # (B, C', N')
    logits = torch.einsum("bcn,bcm->bnm", theta, phi)  # (B, N, N')
    logits = logits * block.config.scale  # C'^-1/2, always, in those projects
    attention = logits.softmax(dim=2)
    y = torch.einsum("bnm,bcm->bcn", attention, g)  # (B, C', N)
    return _output(block, y, x)


def materialising_dot_product(block: NonLocalBlock, x: Tensor) -> Tensor:
    """Dot product as every published implementation computes it: f = theta @ phi / N'
    materialised (B, N, N'), then y = f @ g. Pools where the block's config says (AlexHex7 /
    mmcv after the convs, SlowFast / PyTorchVideo before)."""
    _check(block, x, "materialising_dot_product", "dot_product", None)
    batch, ci = x.shape[0], block.config.inter_channels
    theta = block.theta(x).reshape(batch, ci, -1).permute(0, 2, 1)  # (B, N, C')
    phi, g = _keys_and_values(block, x)
    phi = phi.reshape(batch, ci, -1)  # (B, C', N')
    g = g.reshape(batch, ci, -1).permute(0, 2, 1)  # (B, N', C')
    f = torch.matmul(theta, phi)  # (B, N, N')
    attention = f / f.shape[-1]  # the key count after pooling, a constant
    y = torch.matmul(attention, g)
    return _output(block, y.permute(0, 2, 1).contiguous(), x)


def materialising_concatenation(block: NonLocalBlock, x: Tensor) -> Tensor:
    """Concatenation as AlexHex7 and mmcv compute it: theta (B, C', N, 1) repeated over the
    N' keys and phi (B, C', 1, N') repeated over the N queries are concatenated on channels
    (theta first) into a B x 2C' x N x N' tensor; a 1x1 conv 2C' -> 1 without bias (w_f),
    ReLU, / N', then y = f @ g. Pools where the block's config says."""
    _check(block, x, "materialising_concatenation", "concatenation", None)
    batch, ci = x.shape[0], block.config.inter_channels
    theta = block.theta(x).reshape(batch, ci, -1, 1)  # (B, C', N, 1)
    phi, g = _keys_and_values(block, x)
    phi = phi.reshape(batch, ci, 1, -1)  # (B, C', 1, N')
    n, m = theta.shape[2], phi.shape[3]
    pairs = torch.cat([theta.repeat(1, 1, 1, m), phi.repeat(1, 1, n, 1)], dim=1)
    w_f = block.concat.weight.reshape(1, 2 * ci, 1, 1)  # the (1, 2C') linear as a 1x1 conv
    f = F.relu(F.conv2d(pairs, w_f)).reshape(batch, n, m)  # (B, N, N')
    attention = f / m
    g = g.reshape(batch, ci, -1).permute(0, 2, 1)  # (B, N', C')
    y = torch.matmul(attention, g)
    return _output(block, y.permute(0, 2, 1).contiguous(), x)


# The registry ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Formulation:
    """A published formulation: its forward, the instantiation it computes, the pool position
    it needs when keys are subsampled (None: it follows the block), a label and its sources."""

    forward: Callable[[NonLocalBlock, Tensor], Tensor]
    instantiation: str
    pool_position: str | None
    label: str
    sources: str

    def applies_to(self, block: NonLocalBlock) -> bool:
        """True when `forward` computes ``block(x)`` (instantiation, pool position, layout)."""
        cfg = block.config
        return (
            cfg.instantiation == self.instantiation
            and (
                self.pool_position is None
                or cfg.subsample is None
                or cfg.pool_position == self.pool_position
            )
            and cfg.data_format == "channels_first"
            and cfg.context_channels == cfg.in_channels
        )


FORMULATIONS: dict[str, Formulation] = {
    "alexhex7_embedded": Formulation(
        alexhex7_embedded, "embedded_gaussian", AFTER, "AlexHex7 embedded", "AlexHex7, mmcv"
    ),
    "slowfast_embedded": Formulation(
        slowfast_embedded,
        "embedded_gaussian",
        BEFORE,
        "SlowFast embedded",
        "SlowFast, PyTorchVideo",
    ),
    "materialising_dot_product": Formulation(
        materialising_dot_product,
        "dot_product",
        None,
        "materialising dot product",
        "AlexHex7, mmcv, SlowFast, PyTorchVideo",
    ),
    "materialising_concatenation": Formulation(
        materialising_concatenation,
        "concatenation",
        None,
        "materialising concatenation",
        "AlexHex7, mmcv",
    ),
}


def applicable(block: NonLocalBlock) -> list[str]:
    """Names of the formulations that compute ``block(x)`` with the block's own weights.

    Example:
        >>> applicable(NonLocalBlock(4, instantiation="dot_product", subsample=True))
        ['materialising_dot_product']
    """
    return [name for name, f in FORMULATIONS.items() if f.applies_to(block)]


def pairwise_bytes(
    name: str,
    batch: int,
    num_queries: int,
    num_keys: int,
    inter_channels: int,
    itemsize: int,
    backward: bool,
) -> int:
    """An estimate of the memory `name`'s N x N' intermediates take (bytes).

    Calibrated on the H100 measurements of anchors.md (bf16 autocast): the softmax keeps
    about 10 bytes per pair in forward (logits, scaled logits, a float32 softmax, its bf16
    copy) and 16-20 with backward; counted here as 3 (5 with backward) float32-sized
    elements. The dot product keeps 2 (3) elements of `itemsize`; the concatenation
    4C' + 4 (6C' + 6): the two repeated halves, their concatenation, f, ReLU, f / N'.

    Example:
        >>> pairwise_bytes("materialising_concatenation", 8, 1568, 392, 512, 2, False) / 1e9
        20.18...
    """
    pairs = batch * num_queries * num_keys
    if name in ("alexhex7_embedded", "slowfast_embedded"):
        return pairs * max(itemsize, 4) * (5 if backward else 3)
    if name == "materialising_dot_product":
        return pairs * itemsize * (3 if backward else 2)
    if name == "materialising_concatenation":
        per_pair = 6 * inter_channels + 6 if backward else 4 * inter_channels + 4
        return pairs * itemsize * per_pair
    raise ValueError(f"name={name!r} is not a formulation: expected one of {list(FORMULATIONS)}")
