"""The pairwise part of the non-local block on (B, N, channels) tensors, without N x N' memory.

Every function here takes theta (B, N, d), phi (B, N', d) and g (B, N', C') - positions
flattened row-major, channels last; contiguous is fastest in eager calls, any strides
work - and returns y (B, N, C') with

    y_i = sum_j a_ij g_j,   a_ij = f(theta_i, phi_j) / C_i      (spec section "The operator")

No strategy builds a B x 2C' x N x N' tensor, and only ``pairwise`` (or the attention
output) an N x N' one: the softmax instantiations go through
`scaled_dot_product_attention` (or an exact query-chunked loop), the dot product uses
associativity ``theta (phi^T g) / N'``, and concatenation sorts keys by their scalar half
(see `nonlocal_torch.strategies`). `attention_matrix` materialises a_ij when asked.
Every size is read from the tensors as they are, so compilers and exporters keep N, N' and
the key count symbolic, and the strategy is chosen without sizes while tracing.

A key mask is (B, N') boolean, True = valid. A query with no valid key gets y_i = 0.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend

from nonlocal_core import NonLocalConfig
from nonlocal_core.config import SOFTMAX_INSTANTIATIONS, require_config, require_flag

from .strategies import (
    TRACED_STRATEGIES,
    check_strategy,
    choose_strategy,
    chunked_softmax,
    is_tracing,
    sorted_concatenation,
)


def _mask_parts(mask: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """(safe mask, batch has a valid key): rows with no valid key are made all-valid.

    Masks are per batch item, so "a query with no valid key" means "an item whose whole mask
    is False". Kernels differ on such rows (NaN, or 0 with NaN gradients), so we give them a
    harmless all-True mask and zero their output afterwards, which also zeroes their
    gradients exactly.
    """
    if mask is None:
        return None, None
    has_key = mask.any(dim=-1)  # (B,)
    return mask | ~has_key[:, None], has_key


def _zero_empty(y: Tensor, has_key: Tensor | None) -> Tensor:
    if has_key is None:
        return y
    return y * has_key[:, None, None].to(y.dtype)


def _key_count(mask: Tensor | None, num_keys: int, like: Tensor) -> Tensor | int:
    """C(x) of the non-softmax instantiations: the number of valid keys, per batch item.

    `num_keys` is N' as read from a tensor's shape and is returned as it is: a plain int in
    eager calls, a SymInt (or traced size) under compilers and exporters, which keep it
    symbolic. Converting it (``float(num_keys)``) would bake the traced N' into the program.
    """
    if mask is None:
        return num_keys
    # clamp: items with no valid key have all-zero f, so any positive divisor gives y = 0.
    return mask.sum(dim=-1).clamp(min=1).to(like.dtype)[:, None, None]


def check_operands(
    theta: Any,
    phi: Any,
    g: Any,
    config: NonLocalConfig,
    concat_weight: Any = None,
    mask: Any = None,
) -> None:
    """Raise TypeError/ValueError naming the operand unless theta (B, N, d), phi (B, N', d),
    g (B, N', C'), the concatenation weight (2d,) and the mask (B, N') bool fit together.

    Example:
        >>> cfg = NonLocalConfig(4, spatial_dims=1, instantiation="dot_product")
        >>> check_operands(torch.ones(2, 5, 3), torch.ones(2, 4, 2), torch.ones(2, 4, 2), cfg)
        Traceback (most recent call last):
        ...
        ValueError: phi has shape (2, 4, 2): expected (2, N', 3) to match theta (2, 5, 3)
    """
    require_config(config)
    if any(isinstance(t, torch.fx.Proxy) for t in (theta, phi, g, concat_weight, mask)):
        return  # torch.fx.symbolic_trace: no shapes or dtypes to check until run time
    for name, t in (("theta", theta), ("phi", phi), ("g", g)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3 or not t.is_floating_point():
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} and dtype {t.dtype}: expected a "
                "floating-point (B, positions, channels) tensor"
            )
        if t.device != theta.device:
            raise ValueError(
                f"{name} is on {t.device}, theta on {theta.device}: expected one device"
            )
    b, _, d = theta.shape
    if phi.shape[0] != b or phi.shape[2] != d:
        raise ValueError(
            f"phi has shape {tuple(phi.shape)}: expected ({b}, N', {d}) to match theta "
            f"{tuple(theta.shape)}"
        )
    if g.shape[:2] != phi.shape[:2]:
        raise ValueError(
            f"g has shape {tuple(g.shape)}: expected ({b}, {phi.shape[1]}, C') to match phi "
            f"{tuple(phi.shape)}"
        )
    if config.instantiation == "concatenation":
        if not (
            isinstance(concat_weight, Tensor)
            and concat_weight.is_floating_point()
            and tuple(concat_weight.shape) == (2 * d,)
        ):
            got = (
                f"{tuple(concat_weight.shape)} {concat_weight.dtype}"
                if isinstance(concat_weight, Tensor)
                else type(concat_weight).__name__
            )
            raise ValueError(
                f"concat_weight is {got}: the concatenation needs a floating-point "
                f"({2 * d},) tensor w_f"
            )
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = getattr(mask, "dtype", type(mask).__name__)
            raise TypeError(f"mask has dtype {got}: expected a torch.bool tensor (True = valid)")
        if tuple(mask.shape) != (b, phi.shape[1]):
            raise ValueError(
                f"mask has shape {tuple(mask.shape)}: expected (B, N') = ({b}, {phi.shape[1]})"
            )


def _common_dtype(*tensors: Tensor) -> list[Tensor]:
    # Under autocast theta may be float32 (Gaussian: the raw input) while g is bfloat16;
    # autocast would cast them to the lower precision anyway, so do it explicitly.
    dtype = tensors[-1].dtype
    return [t.to(dtype) for t in tensors]


def softmax_attention(
    theta: Tensor,
    phi: Tensor,
    g: Tensor,
    scale: float,
    mask: Tensor | None = None,
    strategy: str = "auto",
) -> Tensor:
    """Embedded Gaussian / Gaussian: ``y = softmax(scale * theta phi^T) g`` through SDPA.

    q, k, v are passed as contiguous (B, 1, N, d) tensors so that fused kernels (flash,
    memory-efficient, cuDNN) can run; they never materialise the N x N' logits. Where no
    fused kernel accepts the inputs, ``auto`` takes the exact query-chunked path instead.

    Example:
        >>> t = torch.zeros(1, 3, 2); v = torch.arange(8.0).reshape(1, 4, 2)
        >>> softmax_attention(t, torch.zeros(1, 4, 2), v, scale=0.5)[0, 0]
        tensor([3., 4.])
    """
    theta, phi, g = _common_dtype(theta, phi, g)
    safe, has_key = _mask_parts(mask)
    attn_mask = None if safe is None else safe[:, None, None, :]  # (B, 1, 1, N')
    # Channel widths are fixed by the weights, so these branches hold at every input size.
    d, width = theta.shape[-1], g.shape[-1]
    # (B, 1, N, d) heads. The head axis is added before the copies below: under
    # torch.compile with dynamic shapes and autograd, SDPA operands that are views of a
    # contiguous (B, N, d) tensor crash inductor's stride ordering (torch 2.13; the block
    # hands non-contiguous positions while tracing, so .contiguous() here is a real copy).
    q, k, v = (t.unsqueeze(1) for t in (theta, phi, g))
    # Fused kernels (CPU and CUDA flash) want one head dim for q, k and v, else SDPA falls
    # back to the N x N' math kernel. Gaussian has d = C != C': zero-pad the narrower side,
    # which leaves every dot product and every value unchanged, and slice the padding off.
    if width < d:
        v = F.pad(v, (0, d - width))
    elif d < width:
        q, k = F.pad(q, (0, width - d)), F.pad(k, (0, width - d))
    q, k, v = (t.contiguous() for t in (q, k, v))
    if strategy == "chunked" or (
        strategy == "auto" and not _fused_kernel_accepts(q, k, v, attn_mask)
    ):
        y = chunked_softmax(theta, phi, g, scale, safe)
    else:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale).squeeze(1)
    return _zero_empty(y[..., :width], has_key)


def _fused_kernel_accepts(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None) -> bool:
    """False when SDPA would fall back to its math kernel (which builds N x N' logits).

    Asks ``torch._fused_sdp_choice``, the dispatcher's own choice: PyTorch has no public
    query for CPU kernels. Where that private function is missing or cannot answer (it
    refuses functorch's batched tensors under `torch.func.vmap`), answer True: SDPA then
    picks its kernel itself, which is exact either way; only the chunked fallback's memory
    bound is given up. While tracing, the compiler or the exported program's runtime picks.
    """
    if is_tracing(q, k, v):
        return True
    choose = getattr(torch, "_fused_sdp_choice", None)
    if choose is None:
        return True
    try:
        choice = choose(q, k, v, attn_mask, 0.0, False, scale=None)
    except (RuntimeError, TypeError, NotImplementedError):
        return True
    return choice != int(SDPBackend.MATH)


def dot_product_attention(theta: Tensor, phi: Tensor, g: Tensor, mask: Tensor | None = None):
    """Dot product: ``y = theta (phi^T g) / N'``, exact by associativity, O(N d C') work.

    Example:
        >>> t = torch.ones(1, 2, 1); p = torch.ones(1, 3, 1); v = torch.arange(3.0).reshape(1, 3, 1)
        >>> dot_product_attention(t, p, v)[0, :, 0]
        tensor([1., 1.])
    """
    theta, phi, g = _common_dtype(theta, phi, g)
    if mask is not None:
        phi = phi * mask[:, :, None].to(phi.dtype)  # invalid keys contribute nothing
    # Divide the (d, C') summary, not y: it keeps float16 sums of N' terms in range.
    kv = (phi.transpose(1, 2) @ g) / _key_count(mask, phi.shape[1], g)
    return theta @ kv


def _concat_halves(theta: Tensor, phi: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """a_i = w_theta . theta_i (B, N) and b_j = w_phi . phi_j (B, N'); theta half first."""
    half = weight.shape[0] // 2
    weight = weight.to(theta.dtype)
    return theta @ weight[:half], phi @ weight[half:]


def concatenation_attention(
    theta: Tensor, phi: Tensor, g: Tensor, weight: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Concatenation: ``y_i = sum_j ReLU(a_i + b_j) g_j / N'``, sorted: no N x N' memory.

    ``w_f . [theta_i ; phi_j]`` splits into two scalars a_i, b_j, so neither the
    B x 2C' x N x N' tensor of other implementations nor an N x N' matrix is built
    (`nonlocal_torch.strategies.sorted_concatenation`).

    Example:
        >>> t = torch.ones(1, 2, 1); p = torch.ones(1, 3, 1); v = torch.ones(1, 3, 1)
        >>> concatenation_attention(t, p, v, torch.tensor([1.0, -0.5]))[0, :, 0]
        tensor([0.5000, 0.5000])
    """
    theta, phi, g = _common_dtype(theta, phi, g)
    a, b = _concat_halves(theta, phi, weight)
    return sorted_concatenation(a, b, g, mask) / _key_count(mask, phi.shape[1], g)


def attention_matrix(
    theta: Tensor,
    phi: Tensor,
    config: NonLocalConfig,
    concat_weight: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """The (B, N, N') matrix a_ij = f(theta_i, phi_j) / C_i, materialised (for inspection).

    Example:
        >>> cfg = NonLocalConfig(2, spatial_dims=1, instantiation="dot_product")
        >>> attention_matrix(torch.ones(1, 1, 1), torch.ones(1, 4, 1), cfg)
        tensor([[[0.2500, 0.2500, 0.2500, 0.2500]]])
    """
    check_operands(theta, phi, phi, config, concat_weight, mask)
    return _attention_matrix(theta, phi, config.instantiation, config.scale, concat_weight, mask)


def _attention_matrix(theta, phi, instantiation, scale, concat_weight=None, mask=None) -> Tensor:
    theta, phi = _common_dtype(theta, phi)
    if instantiation == "concatenation":
        a, b = _concat_halves(theta, phi, concat_weight)
        f = torch.relu(a[:, :, None] + b[:, None, :])
    else:
        f = theta @ phi.transpose(1, 2)
    safe, has_key = _mask_parts(mask)
    if instantiation in SOFTMAX_INSTANTIATIONS:
        logits = scale * f
        if safe is not None:
            logits = logits.masked_fill(~safe[:, None, :], float("-inf"))
        attention = torch.softmax(logits, dim=-1)
    else:
        if mask is not None:
            f = f * mask[:, None, :].to(f.dtype)
        attention = f / _key_count(mask, phi.shape[1], f)
    return _zero_empty(attention, has_key)


def nonlocal_attention(
    theta: Tensor,
    phi: Tensor,
    g: Tensor,
    config: NonLocalConfig,
    *,
    concat_weight: Tensor | None = None,
    mask: Tensor | None = None,
    return_attention: bool = False,
    strategy: str = "auto",
) -> tuple[Tensor, Tensor | None]:
    """y (B, N, C') for `config`'s instantiation, and a_ij when `return_attention`.

    `strategy` picks an exact execution strategy (see `nonlocal_torch.strategies`); the
    attention output always materialises B x N x N'.

    Example:
        >>> cfg = NonLocalConfig(4, spatial_dims=1)
        >>> y, a = nonlocal_attention(torch.ones(2, 5, 2), torch.ones(2, 3, 2),
        ...                           torch.ones(2, 3, 2), cfg)
        >>> y.shape, a
        (torch.Size([2, 5, 2]), None)
    """
    check_operands(theta, phi, g, config, concat_weight, mask)
    return_attention = require_flag(return_attention, "return_attention")
    return attend(theta, phi, g, config, concat_weight, mask, return_attention, strategy)


def attend(
    theta: Tensor,
    phi: Tensor,
    g: Tensor,
    config: NonLocalConfig,
    concat_weight: Tensor | None,
    mask: Tensor | None,
    return_attention: bool,
    strategy: str,
) -> tuple[Tensor, Tensor | None]:
    """`nonlocal_attention` without its operand checks, for callers that checked already
    (`NonLocalBlock.forward` validates x, context and mask against its config).

    Example:
        >>> cfg = NonLocalConfig(4, spatial_dims=1, instantiation="dot_product")
        >>> y, _ = attend(torch.ones(1, 2, 2), torch.ones(1, 4, 2), torch.ones(1, 4, 3), cfg,
        ...               None, None, False, "auto")
        >>> y[0, 0]
        tensor([2., 2., 2.])
    """
    return attend_parts(
        theta,
        phi,
        g,
        config.instantiation,
        config.scale,
        concat_weight,
        mask,
        return_attention,
        strategy,
    )


def attend_parts(
    theta: Tensor,
    phi: Tensor,
    g: Tensor,
    instantiation: str,
    scale: float | None,
    concat_weight: Tensor | None,
    mask: Tensor | None,
    return_attention: bool,
    strategy: str,
) -> tuple[Tensor, Tensor | None]:
    """`attend` with the config reduced to the two fields it reads, the instantiation and
    the softmax `scale` (None without a softmax): plain values, which a `torch.fx` graph can
    hold as arguments of a call (`NonLocalBlock` keeps this call whole in FX graphs).

    ``strategy="auto"`` applies `choose_strategy` to the sizes in eager calls, and takes
    `TRACED_STRATEGIES` while tracing (`is_tracing`), where sizes are symbolic.

    Example:
        >>> y, a = attend_parts(torch.zeros(1, 2, 2), torch.zeros(1, 4, 2), torch.ones(1, 4, 1),
        ...                     "embedded_gaussian", 0.5, None, None, True, "auto")
        >>> y[0, :, 0], a[0, 0]
        (tensor([1., 1.]), tensor([0.2500, 0.2500, 0.2500, 0.2500]))
    """
    check_strategy(strategy, instantiation)
    if strategy == "auto" and not return_attention:
        if is_tracing(theta, phi, g):
            chosen = TRACED_STRATEGIES[instantiation]
        else:
            training = torch.is_grad_enabled() and any(
                t is not None and t.requires_grad for t in (theta, phi, g, concat_weight)
            )
            chosen = choose_strategy(
                instantiation,
                theta.shape[1],
                phi.shape[1],
                theta.shape[-1],
                g.shape[-1],
                training=training,
            )
        # "sdpa" stays "auto" for softmax_attention, which falls back to "chunked" where no
        # fused kernel accepts the inputs (a forced "sdpa" would take the N x N' math kernel).
        strategy = "auto" if chosen == "sdpa" else chosen
    if return_attention or strategy == "pairwise":
        attention = _attention_matrix(theta, phi, instantiation, scale, concat_weight, mask)
        y = attention @ g.to(attention.dtype)
        return y, (attention if return_attention else None)
    if instantiation in SOFTMAX_INSTANTIATIONS:
        return softmax_attention(theta, phi, g, scale, mask, strategy), None
    if instantiation == "dot_product":
        return dot_product_attention(theta, phi, g, mask), None
    return concatenation_attention(theta, phi, g, concat_weight, mask), None
