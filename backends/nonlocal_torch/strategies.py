"""Exact execution strategies for the pairwise step, and the cost model that picks one.

All strategies compute the same y_i = sum_j a_ij g_j (see `functional`); they differ in
time and memory:

=============== ======================= ============================== =====================
instantiation   strategy                work                           extra memory
=============== ======================= ============================== =====================
softmax         ``sdpa``                N N' (d + C')                  O(N C') fused kernels
softmax         ``chunked``             N N' (d + C')                  chunk x N' (bounded)
dot product     ``associative``         (N + N') d C'                  d x C'
concatenation   ``sorted``              (N + N') (log N' + C')         O((N + N') C')
any             ``pairwise``            N N' (d + C')                  B x N x N'
=============== ======================= ============================== =====================

``auto`` (the default) applies `choose_strategy` in eager calls. While a compiler, exporter
or tracer records the block (`is_tracing`), ``auto`` takes `TRACED_STRATEGIES` instead, which
do not look at sizes: a program captured at one size is then exact and linear in memory at
every size it may later run at (the cost model would bake in a choice made for one size, or
guard on sizes an exporter keeps symbolic). The sorted concatenation rests on
ReLU(a_i + b_j) = (a_i + b_j) [b_j > -a_i]: with keys sorted by b,

    sum_j ReLU(a_i + b_j) g_j = a_i G(t_i) + H(t_i),   t_i = #{j : b_j <= -a_i}

where G and H are suffix sums of g_(k) and b_(k) g_(k) over the sorted keys.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

# The names are shared by every backend (re-exported here, where they are implemented).
from nonlocal_core.strategy_names import ALLOWED_STRATEGIES as ALLOWED_STRATEGIES
from nonlocal_core.strategy_names import STRATEGIES as STRATEGIES
from nonlocal_core.strategy_names import check_strategy as check_strategy

# Elements of one (chunk x N') block of logits in the chunked softmax, per batch item.
CHUNK_ELEMENTS = 1 << 22
# The pairwise concatenation is used only while its (B, N, N') matrix stays below this.
PAIRWISE_LIMIT = 1 << 24
# log(t_sorted / t_pairwise) ~ c0 + c1 log(N N') + c2 log C' + c3 log N' for the
# concatenation, (c0, c1, c2, c3) for inference (False) and training (True). Fitted by
# scripts/calibrate_concatenation.py on an idle 2-core CPU (torch 2.13, 2 threads, B = 2)
# over N N' from 1e4 to 4e6 and C' from 32 to 512 (table in docs/performance.md). There the
# old rule (pairwise while N N' (C' + 2) <= 128 (N + N')(log2 N' + C')) picked the slower
# strategy at 20 of 40 points in inference (up to 4.2x slower) and 16 in training (2.5x);
# this model's wrong picks are near-ties, at worst 1.34x.
CONCAT_MODEL = {
    False: (2.431, -0.354, 0.304, 0.165),
    True: (1.557, -0.273, 0.389, 0.002),
}


# What ``auto`` runs while tracing: exact at every size, traceable with symbolic sizes, and
# free of N x N' memory (the chunked softmax's Python loop over N would specialise on N).
TRACED_STRATEGIES = {
    "embedded_gaussian": "sdpa",
    "gaussian": "sdpa",
    "dot_product": "associative",
    "concatenation": "sorted",
}


# torch.compiler.is_exporting is newer than torch 2.4, the oldest supported; there
# torch.compiler.is_compiling covers torch.export.
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


def is_tracing(*tensors: object) -> bool:
    """True while the call is being recorded rather than run: `torch.compile` (and strict
    `torch.export`), non-strict `torch.export`, `torch.jit.trace`, `torch.fx.symbolic_trace`
    (operands are `torch.fx.Proxy` objects), or any tracer with symbolic sizes (``make_fx``).

    Sizes are then symbols or stand-ins, so nothing may be decided by comparing them in
    Python: such a branch would bake one size's choice into the program, or fail.

    Example:
        >>> is_tracing(torch.ones(2, 3))
        False
        >>> torch.compile(lambda t: t + is_tracing(t), backend="eager")(torch.zeros(1))
        tensor([1.])
    """
    if torch.compiler.is_compiling() or _is_exporting() or torch.jit.is_tracing():
        return True
    for t in tensors:
        if isinstance(t, torch.fx.Proxy):
            return True
        if isinstance(t, Tensor):
            # make_fx (symbolic) hands tensors with SymInt sizes. (A plain loop: this runs
            # on every eager call, where a generator would cost more than the test.)
            for size in t.shape:
                if type(size) is not int:
                    return True
    return False


def choose_strategy(
    instantiation: str,
    num_queries: int,
    num_keys: int,
    embed_dim: int,
    value_dim: int,
    training: bool = False,
) -> str:
    """The cost model behind ``strategy="auto"`` in eager calls (while tracing, sizes are
    symbolic and ``auto`` takes `TRACED_STRATEGIES` instead).

    - softmax: ``sdpa`` (fused kernels, memory linear in N); `softmax_attention` itself
      falls back to ``chunked`` when every fused kernel refuses the inputs. (On CPU in
      training, materialising a small matrix is 15-25% faster at N = N' = 256..576, 4-8 ms;
      the softmax keeps its linear memory at every size instead.)
    - dot product: ``associative`` when (N + N') d C' <= N N' (d + C'), i.e. unless the key
      grid is tiny; otherwise ``pairwise``.
    - concatenation: ``pairwise`` (one (B, N, N') scalar matrix and a matmul) where
      `CONCAT_MODEL` predicts it faster and the matrix stays under `PAIRWISE_LIMIT`
      elements; otherwise ``sorted``. `training` (gradients will be taken) selects the
      forward + backward model: the pairwise backward goes through the matrix again, so
      sorting pays off at smaller sizes there.

    Example:
        >>> choose_strategy("concatenation", 784, 196, 128, 128)  # the matrix is small
        'pairwise'
        >>> choose_strategy("concatenation", 4096, 1024, 64, 64)
        'sorted'
        >>> choose_strategy("dot_product", 4096, 1, 64, 64)
        'pairwise'
    """
    n, m = num_queries, num_keys
    if instantiation in ("gaussian", "embedded_gaussian"):
        return "sdpa"
    if instantiation == "dot_product":
        return (
            "associative"
            if (n + m) * embed_dim * value_dim <= n * m * (embed_dim + value_dim)
            else "pairwise"
        )
    c0, c1, c2, c3 = CONCAT_MODEL[bool(training)]
    width = max(value_dim, 1)
    log_ratio = c0 + c1 * math.log(max(n * m, 1)) + c2 * math.log(width) + c3 * math.log(m)
    if log_ratio >= 0 and n * m <= PAIRWISE_LIMIT:  # sorted predicted no faster
        return "pairwise"
    return "sorted"


def sorted_concatenation(a: Tensor, b: Tensor, g: Tensor, mask: Tensor | None = None) -> Tensor:
    """sum_j ReLU(a_i + b_j) g_j for every i, exactly, without an N x N' matrix.

    a: (B, N), b: (B, N'), g: (B, N', C'); mask (B, N') bool or None. Runs in at least
    float32 (the suffix sums add N' terms). Gradients are those of the pairwise form
    (ReLU'(0) = 0: keys with b_j = -a_i are excluded by the strict comparison).

    Example:
        >>> a = torch.tensor([[0.0, 1.0]]); b = torch.tensor([[-0.5, 0.5, 2.0]])
        >>> sorted_concatenation(a, b, torch.ones(1, 3, 1))[..., 0]
        tensor([[2.5000, 5.0000]])
    """
    out_dtype = g.dtype
    work = torch.promote_types(g.dtype, torch.float32)
    a, b, g = a.to(work), b.to(work), g.to(work)
    if mask is not None:
        g = g * mask[..., None].to(work)  # masked keys add nothing, wherever they sort
        b = b.masked_fill(~mask, 0.0)  # (a NaN scalar of a masked key must not either)
    # The pairwise form is NaN for every query when a key scalar or a value is NaN
    # (ReLU(NaN) = NaN, 0 x NaN = NaN); the suffix sums alone would reach only the queries
    # that key is active for (spec IO-4). NaN * 0 keeps masked NaN values, as there.
    poisoned = torch.isnan(b).any(-1) | torch.isnan(g).flatten(1).any(-1)
    order = torch.argsort(b, dim=-1)
    b_sorted = torch.gather(b, 1, order)
    g_sorted = torch.gather(g, 1, order[..., None].expand_as(g))
    # Suffix sums with a zero row at the end: G[k] = sum_{k' >= k} g_(k').
    zero = g.new_zeros(g.shape[0], 1, g.shape[2])
    parts = torch.cat([g_sorted, b_sorted[..., None] * g_sorted], dim=-1)
    suffix = torch.cat([parts.flip(1).cumsum(1).flip(1), torch.cat([zero, zero], -1)], dim=1)
    # t_i: the first sorted key with b_(k) > -a_i; keys from t_i on are the active ones.
    start = torch.searchsorted(
        b_sorted.detach().contiguous(), (-a).detach().contiguous(), right=True
    )
    picked = torch.gather(suffix, 1, start[..., None].expand(-1, -1, suffix.shape[-1]))
    width = g.shape[-1]
    y = a[..., None] * picked[..., :width] + picked[..., width:]
    y = torch.where(poisoned[:, None, None], float("nan"), y)
    return y.to(out_dtype)


def chunked_softmax(
    theta: Tensor,
    phi: Tensor,
    g: Tensor,
    scale: float,
    mask: Tensor | None = None,
    chunk: int | None = None,
) -> Tensor:
    """softmax(scale theta phi^T) g over query chunks: exact, memory bounded by chunk x N'.

    Used where no fused SDPA kernel accepts the inputs (e.g. very wide Gaussian features).
    With gradients enabled each chunk is recomputed in backward (activation checkpointing),
    so training memory stays bounded too. `mask` must give every item a valid key. The
    loop over chunks is Python: traced with a symbolic N, it specialises on N (a compiler
    recompiles per size, an exporter refuses a dynamic N), which is why ``auto`` never
    picks it while tracing.

    Example:
        >>> t = torch.zeros(1, 5, 2); v = torch.arange(6.0).reshape(1, 3, 2)
        >>> chunked_softmax(t, torch.zeros(1, 3, 2), v, 1.0, chunk=2)[0, -1]
        tensor([2., 3.])
    """
    batch, n, _ = theta.shape
    if chunk is None:
        chunk = max(1, CHUNK_ELEMENTS // max(1, batch * phi.shape[1]))
    bias = None
    if mask is not None:
        bias = torch.zeros(mask.shape, dtype=theta.dtype, device=theta.device)
        bias = bias.masked_fill(~mask, float("-inf"))[:, None, :]

    def block(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        logits = scale * (q @ k.transpose(1, 2))
        if bias is not None:
            logits = logits + bias
        return torch.softmax(logits, dim=-1).to(v.dtype) @ v

    outs = []
    for start in range(0, n, chunk):
        q = theta[:, start : start + chunk]
        if torch.is_grad_enabled() and (q.requires_grad or phi.requires_grad or g.requires_grad):
            outs.append(checkpoint(block, q, phi, g, use_reentrant=False))
        else:
            outs.append(block(q, phi, g))
    return torch.cat(outs, dim=1)
