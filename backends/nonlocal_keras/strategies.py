"""Exact execution strategies for the pairwise step in `keras.ops`, and the rule that picks one.

Every strategy computes the same y_i = sum_j a_ij g_j (see `functional`) on every Keras
backend; they differ in memory and time, as in ``nonlocal_torch.strategies``:

=============== =============== ================================ ===========================
instantiation   strategy        how                              extra memory
=============== =============== ================================ ===========================
softmax         ``sdpa``        `keras.ops.dot_product_attention` fused kernels: O(N C') on
                                                                 PyTorch, cuDNN on JAX GPUs
softmax         ``chunked``     query chunks, online logsumexp,  chunk x N', forward and
                                backward recomputed per chunk    backward
dot product     ``associative`` theta (phi^T g) / N'             d x C'
concatenation   ``sorted``      keys sorted by their scalar,     O((N + N') C')
                                suffix sums
any             ``pairwise``    the (B, N, N') matrix            B x N x N'
=============== =============== ================================ ===========================

``auto`` picks by backend, device, dtype and, where they are known while tracing, sizes
(`choose_strategy`): the pairwise matrix only while it is small, never when a size is
unknown. The chunked softmax keeps its memory bounded in backward too: a custom gradient
(`keras.ops.custom_gradient`) recomputes each chunk's probabilities from the saved
logsumexp, flash-attention style, instead of storing N x N' of them. Its loops are
`keras.ops.fori_loop`, whose trip count may be a tensor: a `tf.function` with unknown
spatial sizes and XLA (``jit_compile``) both run it.

The sorted concatenation rests on ReLU(a_i + b_j) = (a_i + b_j) [b_j > -a_i]: with keys
sorted by b,

    sum_j ReLU(a_i + b_j) g_j = a_i G(t_i) + H(t_i),   t_i = #{j : b_j <= -a_i}

where G and H are suffix sums of g_(k) and b_(k) g_(k) over the sorted keys. Its gradients
are those of the pairwise form, through `take_along_axis` and `cumsum`.
"""

from __future__ import annotations

import keras
from keras import ops

from nonlocal_core import NonLocalConfig

# The names are shared by every backend (re-exported here, where they are implemented).
from nonlocal_core.strategy_names import ALLOWED_STRATEGIES as ALLOWED_STRATEGIES
from nonlocal_core.strategy_names import STRATEGIES as STRATEGIES
from nonlocal_core.strategy_names import check_strategy as check_strategy

from . import functional as F

# Logits per query chunk of the chunked softmax, per batch item (16 MiB in float32).
CHUNK_ELEMENTS = 1 << 22
# Queries per chunk when N' is not known while tracing, and at most when N is not.
DEFAULT_CHUNK = 256
MAX_UNKNOWN_CHUNK = 1024
# ``auto`` materialises the (B, N, N') matrix only while N x N' stays at or below this.
PAIRWISE_LIMIT = 1 << 20


def _on_gpu() -> bool:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() == "gpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def fused_attention_is_exact(config: NonLocalConfig, dtype: str) -> str | None:
    """None when `keras.ops.dot_product_attention` computes this block's y exactly on this
    backend, else the reason it does not.

    Example:
        >>> fused_attention_is_exact(NonLocalConfig(8), "float32") is None
        True
        >>> fused_attention_is_exact(NonLocalConfig(8), "float64")
        'float64 runs in float32 inside the fused kernels'
    """
    dtype = keras.backend.standardize_dtype(dtype)
    backend = keras.backend.backend()
    if not config.is_softmax:
        return f"{config.instantiation} is not a softmax"
    if dtype == "float64":
        return "float64 runs in float32 inside the fused kernels"
    if backend == "jax" and dtype in F.HALF_DTYPES and not _on_gpu():
        # jax.nn.dot_product_attention asks for a BF16_BF16_F32 / F16_F16_F32 dot, which
        # XLA:CPU fails to compile for small shapes ("not supported by the
        # ElementalIrEmitter") - inside jit, past Keras's eager fallback.
        return f"{dtype} does not compile on XLA:CPU"
    if backend != "torch" and config.embed_dim != config.inter_channels:
        # torch's SDPA takes values narrower than keys; JAX's and TensorFlow's do not.
        return f"keys ({config.embed_dim} wide) and values ({config.inter_channels}) differ"
    return None


def fused_attention_is_linear(config: NonLocalConfig, dtype: str, masked: bool = False) -> bool:
    """Whether the fused kernels this backend and device run keep memory linear in N.

    PyTorch's SDPA does with its flash and memory-efficient kernels (CPU and CUDA), which
    need keys as wide as values (otherwise it falls back to the N x N' math path). JAX does
    only through cuDNN's flash attention: on a GPU, in half precision, with a head width
    that is a multiple of 8 and at most 128, and without a key mask (Keras falls back to
    the XLA formulation otherwise, which builds the N x N' logits, as TensorFlow's does).

    Example:
        >>> fused_attention_is_linear(NonLocalConfig(8, instantiation="gaussian"), "float32")
        False
    """
    backend = keras.backend.backend()
    if config.embed_dim != config.inter_channels:
        return False
    if backend == "torch":
        return True
    if backend == "jax":
        width = config.inter_channels
        return (
            _on_gpu()
            and keras.backend.standardize_dtype(dtype) in F.HALF_DTYPES
            and width % 8 == 0
            and width <= 128
            and not masked
        )
    return False


def choose_strategy(
    config: NonLocalConfig,
    dtype: str,
    num_queries: int | None,
    num_keys: int | None,
    *,
    use_fused_attention: bool = True,
    masked: bool = False,
) -> str:
    """What ``strategy="auto"`` runs for `config` in `dtype` (sizes None when unknown;
    `masked`: the call has a key mask).

    - softmax: ``sdpa`` where it is exact and linear in memory on this backend and device;
      otherwise ``pairwise`` while the matrix is small (one matmul is the fastest there),
      else ``chunked``.
    - dot product: ``associative``.
    - concatenation: ``pairwise`` while the matrix is small, else ``sorted``.

    Example:
        >>> cfg = NonLocalConfig(8, instantiation="concatenation")
        >>> choose_strategy(cfg, "float32", 64, 64), choose_strategy(cfg, "float32", 4096, 4096)
        ('pairwise', 'sorted')
    """
    known = num_queries is not None and num_keys is not None
    small = known and num_queries * num_keys <= PAIRWISE_LIMIT
    # Keras on PyTorch sees unknown sizes only while torch traces it (TorchScript for ONNX,
    # torch.export), and neither traces a loop over a symbolic count nor a stable sort:
    # there only the loop-free strategies are exported (the pairwise matrix, or SDPA).
    traced_torch = not known and keras.backend.backend() == "torch"
    if config.instantiation == "dot_product":
        return "associative"
    if config.instantiation == "concatenation":
        return "pairwise" if small or traced_torch else "sorted"
    exact = use_fused_attention and fused_attention_is_exact(config, dtype) is None
    if exact and (fused_attention_is_linear(config, dtype, masked) or traced_torch):
        return "sdpa"
    return "pairwise" if small or traced_torch else "chunked"


def chunk_size(num_queries: int | None, num_keys: int | None) -> int:
    """Queries per chunk: `CHUNK_ELEMENTS` logits per batch item, at most N; at most
    `MAX_UNKNOWN_CHUNK` when N is unknown (the queries are padded by one chunk).

    Example:
        >>> chunk_size(16384, 16384), chunk_size(100, 4), chunk_size(None, None)
        (256, 100, 256)
        >>> chunk_size(None, 1)
        1024
    """
    chunk = DEFAULT_CHUNK if num_keys is None else max(1, CHUNK_ELEMENTS // max(num_keys, 1))
    if num_queries is None:
        return min(chunk, MAX_UNKNOWN_CHUNK)
    return max(1, min(chunk, num_queries))


def chunked_softmax_aggregate(theta, phi, g, valid, scale: float, chunk: int):
    """softmax_j(scale theta_i . phi_j) g over query chunks: exact, memory chunk x N'.

    theta (B, N, d), phi (B, N', d), g (B, N', C') in one floating dtype; `valid` is None
    or a (B, N') tensor of that dtype, 1 for a valid key, and every batch item must have
    one (`functional.softmax_aggregate` opens fully masked items). The backward pass
    recomputes each chunk's probabilities from the forward's logsumexp (FlashAttention's
    recurrences), so gradients take no N x N' memory either.

    Example:
        >>> theta, phi = ops.zeros((1, 5, 2)), ops.zeros((1, 3, 2))
        >>> g = ops.reshape(ops.arange(6.0), (1, 3, 2))
        >>> y = chunked_softmax_aggregate(theta, phi, g, None, 1.0, chunk=2)
        >>> ops.convert_to_numpy(y)[0, -1].tolist()
        [2.0, 3.0]
    """
    if valid is None:
        valid = ops.ones_like(phi[:, :, 0])
    return _chunked_softmax(chunk, float(scale))(theta, phi, g, valid)


def _chunked_softmax(chunk: int, scale: float):
    """The chunked softmax for one chunk size and scale, with its custom gradient."""

    def chunks_of(theta):
        # `chunk` zero rows appended, so every chunk [i c, (i + 1) c) lies inside: no
        # clamping, a static chunk shape, and a trip count that may be a tensor.
        shape = ops.shape(theta)
        padded = ops.concatenate([theta, ops.zeros((shape[0], chunk, shape[2]), theta.dtype)], 1)
        return padded, (shape[1] + chunk - 1) // chunk

    def rows(t, i):
        shape = ops.shape(t)
        start = [0, i * chunk] + [0] * (len(t.shape) - 2)
        return ops.slice(t, start, [shape[0], chunk, *shape[2:]])

    def put(t, i, value):
        """Write value (B, chunk, K) at rows [i c, (i + 1) c) of t, kept rows first (R, B, K)."""
        value = ops.moveaxis(value, 1, 0)
        if keras.backend.backend() == "tensorflow":
            # Keras's TensorFlow slice_update is XlaDynamicUpdateSlice, which tf2onnx cannot
            # convert (ONNX export); a scatter of whole rows is TensorScatterUpdate.
            rows_at = (i * chunk + ops.arange(chunk, dtype="int32"))[:, None]
            return ops.scatter_update(t, rows_at, value)
        return ops.slice_update(t, [i * chunk, 0, 0], value)

    def taken(t, i):
        """Rows [i c, (i + 1) c) of a rows-first (R, B, K) tensor, as (B, chunk, K)."""
        shape = ops.shape(t)
        return ops.moveaxis(ops.slice(t, [i * chunk, 0, 0], [chunk, shape[1], shape[2]]), 0, 1)

    def row_max(s):
        if _known(s.shape[-1]) is None:
            # JAX's max over a symbolic extent (a program exported with symbolic sizes)
            # must otherwise prove the extent non-empty, which it cannot.
            return ops.max(s, axis=-1, keepdims=True, initial=float("-inf"))
        return ops.max(s, axis=-1, keepdims=True)

    def logits(q, phi, bias):
        return ops.einsum("bnd,bmd->bnm", q, phi) * scale + bias[:, None, :]

    def forward(theta, phi, g, valid, stop: bool = True):
        """y and the logsumexp of every query. With `stop`, on stopped copies of the inputs,
        so that no autodiff records it (TensorFlow's eager tape would keep every chunk's
        logits alive until the backward pass, N x N' in all); the gradient is `backward`."""
        if stop:
            theta, phi = ops.stop_gradient(theta), ops.stop_gradient(phi)
            g = ops.stop_gradient(g)
        # Scalars, not `full_like(-inf)`: tf2onnx writes that as 0 x -inf (NaN).
        bias = ops.cast(ops.where(valid > 0, 0.0, float("-inf")), valid.dtype)
        padded, count = chunks_of(theta)
        shape = ops.shape(padded)

        def step(i, state):
            y, lse = state
            s = logits(rows(padded, i), phi, bias)
            top = ops.stop_gradient(row_max(s))
            p = ops.exp(s - top)
            total = ops.sum(p, axis=-1, keepdims=True)
            y = put(y, i, ops.einsum("bnm,bmc->bnc", p, g) / total)
            return y, put(lse, i, top + ops.log(total))

        state = (
            ops.zeros((shape[1], shape[0], ops.shape(g)[2]), g.dtype),
            ops.zeros((shape[1], shape[0], 1), theta.dtype),
        )
        y_rows, lse = ops.fori_loop(0, count, step, state)
        return ops.moveaxis(y_rows, 0, 1)[:, : ops.shape(theta)[1]], lse

    def backward(theta, phi, g, valid, lse, upstream):
        """FlashAttention's backward, per chunk, from the saved logsumexp `lse`.

        A function of theta, phi, g and the upstream gradient alone, so that differentiating
        it again (gradient penalties, Hessian-vector products) is exact: `lse` enters only
        through the probabilities' values, whose derivative is restored to the softmax's
        (third and higher derivatives are not).
        """
        bias = ops.cast(ops.where(valid > 0, 0.0, float("-inf")), valid.dtype)
        queries, count = chunks_of(theta)
        shape = ops.shape(queries)
        dy = ops.concatenate(
            [upstream, ops.zeros((shape[0], chunk, ops.shape(g)[2]), upstream.dtype)], 1
        )

        def step(i, state):
            d_theta, d_phi, d_g = state
            q, do = rows(queries, i), rows(dy, i)
            raw = ops.einsum("bnd,bmd->bnm", q, phi) * scale
            s = raw + bias[:, None, :]
            # p = softmax_j(s_ij) from the saved logsumexp (one exp), made differentiable
            # in s to first order: p + p (ds - sum_j p ds) is p in value and has the
            # softmax's Jacobian, which is all a second derivative needs.
            p_saved = ops.stop_gradient(ops.exp(s - taken(lse, i)))
            delta = raw - ops.stop_gradient(raw)  # zero in value
            p = p_saved + p_saved * (delta - ops.sum(p_saved * delta, axis=-1, keepdims=True))
            dp = ops.einsum("bnc,bmc->bnm", do, g)
            # D_i = dy_i . y_i = sum_j p_ij dp_ij: in the inputs, with no product for y.
            dots = ops.sum(p * dp, axis=-1, keepdims=True)
            d_g = d_g + ops.einsum("bnm,bnc->bmc", p, do)
            ds = p * (dp - dots) * scale
            d_theta = put(d_theta, i, ops.einsum("bnm,bmd->bnd", ds, phi))
            return d_theta, d_phi + ops.einsum("bnm,bnd->bmd", ds, q), d_g

        init = (
            ops.zeros((shape[1], shape[0], shape[2]), theta.dtype),
            ops.zeros_like(phi),
            ops.zeros_like(g),
        )
        d_theta, d_phi, d_g = ops.fori_loop(0, count, step, init)
        d_theta = ops.moveaxis(d_theta, 0, 1)[:, : ops.shape(theta)[1]]
        return d_theta, d_phi, d_g, ops.zeros_like(valid)

    if keras.backend.backend() == "jax":
        # jax.custom_gradient (behind keras.ops.custom_gradient) differentiates its
        # gradient only once: a second derivative silently treats the inputs it closes
        # over as constants. jax.custom_vjp differentiates `backward` again, and the
        # forward (not stopped: JAX has no tape, and only a second derivative
        # differentiates it, through the loop), exactly.
        import jax

        @jax.custom_vjp
        def attend_jax(theta, phi, g, valid):
            return forward(theta, phi, g, valid, stop=False)[0]

        def forward_jax(theta, phi, g, valid):
            y, lse = forward(theta, phi, g, valid, stop=False)
            return y, (theta, phi, g, valid, lse)

        def backward_jax(residuals, upstream):
            return backward(*residuals, upstream)

        attend_jax.defvjp(forward_jax, backward_jax)
        return attend_jax

    @ops.custom_gradient
    def attend(theta, phi, g, valid):
        y, lse = forward(theta, phi, g, valid)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return backward(theta, phi, g, valid, lse, upstream)

        return y, grad

    return attend


def suffix_sums(x, block: int = 64):
    """s_k = sum_{k' >= k} x_k' along axis 1 of (B, M, K), in x's dtype.

    `keras.ops.cumsum` computes float64 in float32 on PyTorch (Keras's promotion maps 64-bit
    types to 32-bit ones there; JAX with x64 keeps float64, and takes the same path, which
    costs it nothing in accuracy), so float64 takes blocked sums instead: within
    blocks of `block` rows a product with a triangular matrix of ones, across blocks the
    same recursively, O(M K block) work in exact float64 einsums.

    Example:
        >>> x = ops.reshape(ops.arange(5.0), (1, 5, 1))
        >>> ops.convert_to_numpy(suffix_sums(x, block=2))[0, :, 0].tolist()
        [10.0, 10.0, 9.0, 7.0, 4.0]
    """
    dtype = keras.backend.standardize_dtype(x.dtype)
    if dtype != "float64" or keras.backend.backend() == "tensorflow":
        return ops.flip(ops.cumsum(ops.flip(x, axis=1), axis=1), axis=1)
    shape = ops.shape(x)
    count = (shape[1] + block - 1) // block
    padded = ops.concatenate([x, ops.zeros((shape[0], block, shape[2]), x.dtype)], axis=1)
    blocks = ops.reshape(padded[:, : count * block], (shape[0], count, block, shape[2]))
    # upper[l, m] = 1 where l >= m: row m of a block sums its rows m and after.
    upper = ops.cast(ops.triu(ops.ones((block, block), "int32")), x.dtype)
    within = ops.einsum("bnlk,ml->bnmk", blocks, upper)
    totals = within[:, :, 0]  # (B, count, K): each block's sum
    if type(count) is int and count == 1:
        after = ops.zeros_like(totals)
    elif type(count) is int:
        # Blocks after block n: the suffix sums of the totals, shifted by one block.
        later = suffix_sums(totals, block)
        after = ops.concatenate([later[:, 1:], ops.zeros_like(later[:, :1])], axis=1)
    else:  # a symbolic count (an exported program): one strictly triangular product
        strict = ops.cast(ops.triu(ops.ones((count, count), "int32"), 1), x.dtype)
        after = ops.einsum("bnk,mn->bmk", totals, strict)
    out = within + after[:, :, None, :]
    return ops.reshape(out, (shape[0], count * block, shape[2]))[:, : shape[1]]


def count_at_most(sorted_keys, targets):
    """t_i = #{k : sorted_keys_k <= targets_i} per batch item: (B, M) sorted, (B, N) -> (B, N).

    A batched ``searchsorted(side="right")`` from one stable sort of keys and targets
    together, keys first, so that a key equal to a target comes before it: the target's
    rank there, less the targets before it. (`keras.ops.searchsorted` is 1-D only, and
    batching it with `vectorized_map` exports neither through TorchScript nor tf2onnx;
    argsort, take_along_axis and cumsum export everywhere.)

    Example:
        >>> keys = ops.convert_to_tensor([[-1.0, 0.0, 1.0]])
        >>> ops.convert_to_numpy(count_at_most(keys, ops.convert_to_tensor([[0.0, -1.0, 5.0, -5.0]]))).tolist()
        [[2, 1, 3, 0]]
    """  # noqa: E501
    count = ops.shape(sorted_keys)[1]
    order = ops.argsort(ops.concatenate([sorted_keys, targets], axis=1), axis=1)
    # Inclusive counts of keys along the merged order; at a target, the keys before it.
    keys_before = ops.cumsum(ops.cast(order < count, "int32"), axis=1)
    rank = ops.argsort(order, axis=1)  # the inverse permutation
    return ops.take_along_axis(keys_before, rank[:, count:], axis=1)


def sorted_concatenation_aggregate(a, b, g, valid):
    """sum_j ReLU(a_i + b_j) g_j for every i, exactly, without an N x N' matrix.

    a (B, N), b (B, N'), g (B, N', C'); `valid` None or (B, N') of g's dtype, 1 for a
    valid key. Runs in at least float32 (the suffix sums add N' terms) and returns g's
    dtype. Keys with b_j = -a_i are excluded (ReLU(0) = 0, and ReLU'(0) = 0 as in the
    pairwise form).

    Example:
        >>> a, b = ops.convert_to_tensor([[0.0, 1.0]]), ops.convert_to_tensor([[-0.5, 0.5, 2.0]])
        >>> y = sorted_concatenation_aggregate(a, b, ops.ones((1, 3, 1)), None)
        >>> ops.convert_to_numpy(y)[..., 0].tolist()
        [[2.5, 5.0]]
    """
    out_dtype = keras.backend.standardize_dtype(g.dtype)
    work = "float64" if out_dtype == "float64" else "float32"
    a, b, g = ops.cast(a, work), ops.cast(b, work), ops.cast(g, work)
    if valid is not None:
        valid = ops.cast(valid, work)
        g = g * valid[:, :, None]  # masked keys add nothing, wherever they sort
        b = ops.where(valid > 0, b, ops.zeros_like(b))  # (nor does a masked NaN scalar)
    # The pairwise form is NaN for every query when a key scalar or a value is NaN
    # (ReLU(NaN) = NaN, 0 x NaN = NaN); the suffix sums alone would reach only the queries
    # that key is active for (spec IO-4). The sort itself sees no NaN: its order would be
    # backend-defined.
    poisoned = ops.logical_or(ops.any(ops.isnan(b), axis=1), ops.any(ops.isnan(g), axis=(1, 2)))[
        :, None, None
    ]
    b = ops.where(ops.isnan(b), ops.zeros_like(b), b)
    order = ops.argsort(b, axis=1)
    b_sorted = ops.take_along_axis(b, order, axis=1)
    g_sorted = ops.take_along_axis(g, order[:, :, None], axis=1)
    # Suffix sums with a zero row at the end: G[k] = sum_{k' >= k} g_(k'), H likewise.
    parts = ops.concatenate([g_sorted, b_sorted[:, :, None] * g_sorted], axis=-1)
    suffix = suffix_sums(parts)
    suffix = ops.concatenate([suffix, ops.zeros_like(suffix[:, :1])], axis=1)
    targets = ops.stop_gradient(ops.where(ops.isnan(a), ops.zeros_like(a), -a))
    start = count_at_most(ops.stop_gradient(b_sorted), targets)
    picked = ops.take_along_axis(suffix, ops.cast(start, "int32")[:, :, None], axis=1)
    width = ops.shape(g)[2]
    y = a[:, :, None] * picked[:, :, :width] + picked[:, :, width:]
    # A scalar NaN, not `full_like(nan)`: tf2onnx writes that as 0 x NaN.
    y = ops.where(poisoned, ops.cast(float("nan"), y.dtype), y)
    return ops.cast(y, out_dtype)


def attend(theta, phi, g, mask, config: NonLocalConfig, strategy: str, **options):
    """y (B, N, C') of the pairwise step by `strategy`, and the attention matrix or None.

    `mask` is None or a (B, N') bool tensor. `options`: ``concat_kernel`` (w_f, for the
    concatenation), ``return_attention`` (materialise and return a_ij: always the pairwise
    form) and ``use_fused_attention`` (False keeps ``auto`` off ``sdpa``). ``auto``
    resolves through `choose_strategy`; a forced ``sdpa`` that would not be exact here is
    a ValueError saying why.

    Example:
        >>> cfg = NonLocalConfig(2, spatial_dims=1, instantiation="dot_product")
        >>> y, a = attend(ops.ones((1, 3, 1)), ops.ones((1, 2, 1)), ops.ones((1, 2, 1)),
        ...               None, cfg, "auto")
        >>> ops.convert_to_numpy(y)[0, :, 0].tolist(), a
        ([1.0, 1.0, 1.0], None)
    """
    dtype = keras.backend.standardize_dtype(theta.dtype)
    check_strategy(strategy, config.instantiation)
    if options.get("return_attention", False):
        strategy = "pairwise"
    elif strategy == "auto":
        use_fused = options.get("use_fused_attention", True)
        n, m = theta.shape[1], phi.shape[1]
        known = (_known(n), _known(m))
        masked = mask is not None
        strategy = choose_strategy(
            config, dtype, *known, use_fused_attention=use_fused, masked=masked
        )
    elif strategy == "sdpa":
        reason = fused_attention_is_exact(config, dtype)
        if reason is not None:
            raise ValueError(
                f"strategy='sdpa' cannot run this block exactly on Keras's "
                f"{keras.backend.backend()} backend: {reason}; expected 'auto', 'chunked' "
                "or 'pairwise'"
            )

    if strategy == "sdpa":
        return F.fused_softmax_aggregate(theta, phi, g, mask, config.scale), None
    if strategy == "chunked":
        return _chunked_with_mask(theta, phi, g, mask, config.scale), None
    if strategy == "associative":
        return F.dot_product_aggregate(theta, phi, g, mask), None
    if strategy == "sorted":
        kernel = options["concat_kernel"]
        half = ops.shape(kernel)[0] // 2
        a = ops.einsum("bnc,c->bn", theta, kernel[:half])
        b = ops.einsum("bmc,c->bm", phi, kernel[half:])
        valid = None if mask is None else ops.cast(mask, g.dtype)
        count = F.valid_counts(phi, mask, g.dtype)
        return sorted_concatenation_aggregate(a, b, g, valid) * F.safe_inverse(count), None
    if config.is_softmax:
        attention = F.softmax_attention(theta, phi, mask, config.scale)
    elif config.instantiation == "dot_product":
        attention = F.pairwise_dot_product(theta, phi, mask)
    else:
        attention = F.concatenation_attention(theta, phi, options["concat_kernel"], mask)
    return F.aggregate(attention, g), attention


def _known(size) -> int | None:
    """A concrete size, or None: unknown (TensorFlow) or symbolic (JAX's shape polymorphism,
    whose comparisons with integers raise when inconclusive)."""
    return size if type(size) is int else None


def _chunked_with_mask(theta, phi, g, mask, scale: float):
    """The chunked softmax in float32 for half inputs; fully masked items get y = 0."""
    dtype = keras.backend.standardize_dtype(theta.dtype)
    acc = F.accumulation_dtype(dtype)
    theta, phi, g = ops.cast(theta, acc), ops.cast(phi, acc), ops.cast(g, acc)
    chunk = chunk_size(_known(theta.shape[1]), _known(phi.shape[1]))
    if mask is None:
        return ops.cast(chunked_softmax_aggregate(theta, phi, g, None, scale, chunk), dtype)
    any_valid = ops.any(mask, axis=1)[:, None]  # (B, 1)
    valid = ops.cast(ops.logical_or(mask, ops.logical_not(any_valid)), acc)
    y = chunked_softmax_aggregate(theta, phi, g, valid, scale, chunk)
    y = ops.where(any_valid[:, :, None], y, ops.zeros_like(y))
    return ops.cast(y, dtype)
