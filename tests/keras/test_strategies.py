"""Every execution strategy of the Keras layer computes the spec's function, with its
gradients, masks, contexts, half precision and non-finite values, compiled with unknown
sizes; and ``auto`` never materialises N x N' beyond a small size."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from nonlocal_core import INSTANTIATIONS, NonLocalConfig, nonlocal_forward, random_weights
from nonlocal_keras import NonLocalBlock
from nonlocal_keras import strategies as S

from .conftest import BACKEND, make_input, to_numpy

# Strategies that run every config of their instantiation (sdpa does not run float64).
EXACT = {
    inst: [s for s in allowed if s not in ("auto", "sdpa")]
    for inst, allowed in S.ALLOWED_STRATEGIES.items()
}
CASES = [(inst, strategy) for inst in INSTANTIATIONS for strategy in EXACT[inst]]
# The session's adapter turns on float64 on JAX.
pytestmark = pytest.mark.usefixtures("adapter")


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 3 queries: several chunks, the last one partial, at test sizes."""
    monkeypatch.setattr(S, "chunk_size", lambda n, m: 3)


def _config(instantiation: str, **kwargs) -> NonLocalConfig:
    return NonLocalConfig(
        4,
        spatial_dims=2,
        instantiation=instantiation,
        context_channels=None if instantiation == "gaussian" else 5,
        data_format="channels_last",
        **kwargs,
    )


def _inputs(cfg: NonLocalConfig, seed: int = 0):
    """x (2, 5, 4, 4), a context (2, 6, 5, C_ctx) and a key mask whose item 0 is empty."""
    x = make_input(cfg, seed=seed, extent=(5, 4))
    ctx = make_input(cfg, seed=seed + 1, extent=(6, 5), channels=cfg.context_channels)
    mask = np.random.default_rng(seed).random((2, *cfg.pooled_extent((6, 5)))) > 0.4
    mask[0] = False
    return x, ctx, mask


def _block(cfg, weights, strategy: str, dtype: str = "float64") -> NonLocalBlock:
    block = NonLocalBlock(**cfg.to_dict(), dtype=dtype, strategy=strategy)
    block.load_canonical_weights(weights)
    return block


@pytest.mark.parametrize(("instantiation", "strategy"), CASES)
@pytest.mark.parametrize("training", [False, True])
def test_strategy_matches_the_reference(small_chunks, instantiation, strategy, training):
    cfg = _config(instantiation, subsample=True)
    weights = random_weights(cfg, seed=1)
    x, ctx, mask = _inputs(cfg)
    block = _block(cfg, weights, strategy)
    for context, key_mask in ((ctx, None), (ctx, mask)):
        want = nonlocal_forward(
            x, weights, cfg, context=context, key_mask=key_mask, training=training
        )
        got = to_numpy(block(x, context=context, key_mask=key_mask, training=training))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def _gradients(adapter, block, x, ctx, mask, cotangent) -> dict[str, np.ndarray]:
    block._conformance_device = "cpu"
    return adapter.gradients(block, x, cotangent, context=ctx, key_mask=mask, training=True)


@pytest.mark.parametrize(("instantiation", "strategy"), [c for c in CASES if c[1] != "pairwise"])
def test_strategy_gradients_equal_the_pairwise_ones(adapter, small_chunks, instantiation, strategy):
    # The pairwise gradients are checked against the reference's finite differences in
    # test_reference.py; the others must agree with them to float64 rounding.
    cfg = _config(instantiation, subsample=True)
    weights = random_weights(cfg, seed=2)
    x, ctx, mask = _inputs(cfg, seed=2)
    mask[0, 0, 0] = True  # one valid key: item 0's gradients are not all zero
    cotangent = np.random.default_rng(3).normal(size=x.shape)
    want = _gradients(adapter, _block(cfg, weights, "pairwise"), x, ctx, mask, cotangent)
    got = _gradients(adapter, _block(cfg, weights, strategy), x, ctx, mask, cotangent)
    assert sorted(got) == sorted(want)
    for name in want:
        assert np.any(want[name] != 0), name
        np.testing.assert_allclose(got[name], want[name], rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize(("instantiation", "strategy"), CASES)
def test_non_finite_values_reach_what_the_spec_says(small_chunks, instantiation, strategy):
    # IO-4: a NaN in x (given a separate x^) poisons its own position only; a NaN in a
    # key or value of x^ poisons its batch item only.
    cfg = _config(instantiation).replace(context_channels=None)
    weights = random_weights(cfg, seed=4)
    x = make_input(cfg, seed=4, extent=(5, 4))
    block = _block(cfg, weights, strategy)
    query = x.copy()
    query[0, 2, 1, :] = np.nan
    z = to_numpy(block(query, context=x))
    bad = ~np.isfinite(z).all(axis=-1)
    assert bad[0, 2, 1] and bad.sum() == 1
    ctx = x.copy()
    ctx[1, 4, 3, :] = np.nan
    z = to_numpy(block(x, context=ctx))
    assert np.isfinite(z[0]).all() and not np.isfinite(z[1]).any()


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_return_attention_is_the_pairwise_matrix_under_any_strategy(instantiation):
    cfg = _config(instantiation).replace(context_channels=None)
    weights = random_weights(cfg, seed=5)
    x = make_input(cfg, seed=5, extent=(5, 4))
    _, want = nonlocal_forward(x, weights, cfg, return_attention=True)
    for strategy in EXACT[instantiation]:
        _, attention = _block(cfg, weights, strategy)(x, return_attention=True)
        np.testing.assert_allclose(to_numpy(attention), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("instantiation", "strategy"), CASES)
def test_half_precision_runs_in_float32_inside(instantiation, strategy):
    cfg = _config(instantiation, subsample=True)
    weights = random_weights(cfg, seed=6)
    x, ctx, mask = _inputs(cfg, seed=6)
    want = nonlocal_forward(x, weights, cfg, context=ctx, key_mask=mask)
    block = _block(cfg, weights, strategy, dtype="mixed_bfloat16")
    z = block(x.astype("float32"), context=ctx.astype("float32"), key_mask=mask)
    assert keras.backend.standardize_dtype(z.dtype) == "bfloat16"
    # bfloat16 keeps 8 bits: the inputs and projections round at 2^-8 relative.
    np.testing.assert_allclose(to_numpy(z), want, rtol=0, atol=0.1)


def test_auto_materialises_only_small_matrices():
    softmax = NonLocalConfig(8)
    if S.fused_attention_is_linear(softmax, "float32"):
        assert S.choose_strategy(softmax, "float32", 10**6, 10**6) == "sdpa"
    else:
        assert S.choose_strategy(softmax, "float32", 64, 64) == "pairwise"
        assert S.choose_strategy(softmax, "float32", 4096, 4096) == "chunked"
        assert S.choose_strategy(softmax, "float32", None, 64) == "chunked"
    concat = softmax.replace(instantiation="concatenation")
    assert S.choose_strategy(concat, "float32", 4096, 4096) == "sorted"
    assert S.choose_strategy(softmax.replace(instantiation="dot_product"), "float64", 9, 9) == (
        "associative"
    )
    # float64 never goes to the fused kernels, which compute in float32.
    assert S.choose_strategy(softmax, "float64", 4096, 4096) == "chunked"


def test_bad_strategies_are_named():
    with pytest.raises(ValueError, match=r"NonLocalBlock\.strategy='fast' is invalid"):
        NonLocalBlock(strategy="fast")
    with pytest.raises(ValueError, match=r"strategy='sorted' is invalid for dot_product"):
        NonLocalBlock(instantiation="dot_product", strategy="sorted")
    block = NonLocalBlock(4, spatial_dims=1, dtype="float64", strategy="sdpa")
    with pytest.raises(ValueError, match=r"strategy='sdpa' cannot run .* float64"):
        block(np.zeros((1, 3, 4)))
    block = NonLocalBlock(4, spatial_dims=1, instantiation="concatenation")
    block.strategy = "chunked"
    with pytest.raises(ValueError, match=r"strategy='chunked' is invalid for concatenation"):
        block(np.zeros((1, 3, 4), "float32"))


JIT = BACKEND in ("tensorflow", "jax")


@pytest.mark.parametrize(
    ("instantiation", "strategy"),
    [("embedded_gaussian", "chunked"), ("gaussian", "chunked"), ("concatenation", "sorted")],
)
def test_compiled_training_with_unknown_sizes(small_chunks, instantiation, strategy):
    # One model, unknown batch and spatial sizes, XLA-compiled on TensorFlow and JAX: a
    # training step moves the block, and prediction at two sizes is the reference's.
    keras.utils.set_random_seed(0)
    block = NonLocalBlock(instantiation=instantiation, subsample=True, strategy=strategy)
    inputs = keras.Input((None, None, 3))
    h = keras.layers.Conv2D(4, 1, name="stem")(inputs)
    outputs = keras.layers.GlobalAveragePooling2D()(block(h))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=JIT)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 8, 3)).astype("float32")
    model.train_on_batch(x, rng.normal(size=(4, 4)).astype("float32"))
    model.train_on_batch(x, rng.normal(size=(4, 4)).astype("float32"))
    weights = {k: v.astype(np.float64) for k, v in block.canonical_weights().items()}
    assert np.any(weights["norm.gamma"] != 0)
    stem = keras.Model(inputs, model.get_layer("stem").output)
    inner = keras.Model(inputs, block.output)
    inner.compile(jit_compile=JIT)
    for size in ((7, 5), (4, 10)):
        xs = rng.normal(size=(3, *size, 3)).astype("float32")
        h = to_numpy(stem(xs))
        want = nonlocal_forward(h, weights, block.nonlocal_config)
        got = np.asarray(inner.predict(xs, verbose=0), np.float64)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


@pytest.mark.skipif(BACKEND != "jax", reason="XLA's memory analysis of compiled programs")
@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_auto_needs_no_quadratic_memory_forward_or_backward(instantiation):
    # N = N' = 16384: one (N, N') float32 matrix is 1 GiB; the compiled forward and
    # forward+backward of `auto` must need an eighth of it at most in temporaries (the
    # chunked softmax holds a few 16 MiB chunks of logits at a time; pairwise: 2-3 GiB).
    import jax

    cfg = NonLocalConfig(16, spatial_dims=1, instantiation=instantiation, norm=None)
    block = NonLocalBlock(**cfg.replace(data_format="channels_last").to_dict())
    block.build((None, 16384, 16))
    x = jax.numpy.ones((1, 16384, 16), "float32")
    trainable = [v.value for v in block.trainable_variables]

    def loss(trainable, x):
        z, _ = block.stateless_call(trainable, [], x)
        return ops.sum(z * z)

    for fn in (loss, jax.grad(loss, argnums=(0, 1))):
        temp = jax.jit(fn).lower(trainable, x).compile().memory_analysis().temp_size_in_bytes
        assert temp < 128 * 2**20, (fn.__name__, f"{temp / 2**20:.0f} MiB")


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.function with unknown dimensions")
@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize(("instantiation", "strategy"), [c for c in CASES if c[1] != "pairwise"])
def test_tf_function_with_every_size_unknown(small_chunks, instantiation, strategy, jit_compile):
    import tensorflow as tf

    cfg = _config(instantiation).replace(context_channels=None)
    weights = random_weights(cfg, seed=7)
    block = _block(cfg, weights, strategy, dtype="float32")
    spec = tf.TensorSpec((None, None, None, cfg.in_channels), "float32")
    run = tf.function(lambda x: block(x), input_signature=[spec], jit_compile=jit_compile)
    for extent in ((5, 4), (2, 9)):
        x = make_input(cfg, seed=7, extent=extent)
        want = nonlocal_forward(x, weights, cfg)
        np.testing.assert_allclose(to_numpy(run(x.astype("float32"))), want, rtol=0, atol=1e-5)


def test_sorted_concatenation_counts_keys_equal_to_a_target_as_inactive():
    # ReLU(a_i + b_j) with b_j = -a_i is 0 and so is its derivative (every backend's ReLU'
    # at 0): the key must fall before t_i. This needs the merged sort to be stable.
    keys = np.array([[-2.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 3.0]] * 2)
    targets = np.array([[0.0, -1.0, 3.0, -3.0, 0.5, 1.0], [-1.0, 0.0, 0.0, 4.0, -2.0, 3.0]])
    want = (keys[:, None, :] <= targets[:, :, None]).sum(-1)
    got = S.count_at_most(ops.convert_to_tensor(keys), ops.convert_to_tensor(targets))
    np.testing.assert_array_equal(to_numpy(got), want)


def _second_order(f, theta):
    """d/dtheta sum((d f / d theta)^2) with this backend's autodiff, and the gradient."""
    if BACKEND == "jax":
        import jax

        first = jax.grad(f)
        return np.asarray(first(theta)), np.asarray(
            jax.grad(lambda t: ops.sum(first(t) ** 2))(theta)
        )
    if BACKEND == "tensorflow":
        import tensorflow as tf

        t = tf.constant(theta)
        with tf.GradientTape() as outer:
            outer.watch(t)
            with tf.GradientTape() as inner:
                inner.watch(t)
                value = f(t)
            first = inner.gradient(value, t)
            total = tf.reduce_sum(first**2)
        return first.numpy(), outer.gradient(total, t).numpy()
    import torch

    t = torch.tensor(theta, requires_grad=True)
    (first,) = torch.autograd.grad(f(t), t, create_graph=True)
    (second,) = torch.autograd.grad((first**2).sum(), t)
    return first.detach().numpy(), second.numpy()


def test_chunked_softmax_second_derivatives_are_exact():
    # Gradient penalties and Hessian-vector products differentiate the custom backward
    # again: it must be a function of the inputs, not of values saved as constants.
    rng = np.random.default_rng(8)
    theta = 2 * rng.normal(size=(2, 7, 3))
    phi, g = ops.convert_to_tensor(2 * rng.normal(size=(2, 5, 3))), rng.normal(size=(2, 5, 4))
    valid = np.ones((2, 5))
    valid[1, :2] = 0
    g, valid = ops.convert_to_tensor(g), ops.convert_to_tensor(valid)

    def chunked(t):
        return ops.sum(ops.sin(S.chunked_softmax_aggregate(t, phi, g, valid, 0.7, 3)))

    def pairwise(t):
        s = ops.einsum("bnd,bmd->bnm", t, phi) * 0.7
        s = ops.where(valid[:, None, :] > 0, s, float("-inf"))
        return ops.sum(ops.sin(ops.einsum("bnm,bmc->bnc", ops.softmax(s, axis=-1), g)))

    want, got = _second_order(pairwise, theta), _second_order(chunked, theta)
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-12)
    assert np.abs(want[1]).max() > 1
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-12)


def test_jax_fused_attention_counts_as_linear_only_where_cudnn_runs(monkeypatch):
    # Keras falls back to XLA's N x N' formulation unless cuDNN's flash attention runs:
    # a GPU, half precision, a head width that is a multiple of 8 up to 128, no mask.
    monkeypatch.setattr(S.keras.backend, "backend", lambda: "jax")
    monkeypatch.setattr(S, "_on_gpu", lambda: True)
    cfg = NonLocalConfig(128)  # C' = 64
    assert S.fused_attention_is_linear(cfg, "bfloat16")
    assert not S.fused_attention_is_linear(cfg, "float32")
    assert not S.fused_attention_is_linear(cfg, "bfloat16", masked=True)
    assert not S.fused_attention_is_linear(cfg.replace(inter_channels=60), "bfloat16")
    assert not S.fused_attention_is_linear(NonLocalConfig(1024), "bfloat16")  # C' = 512
    monkeypatch.setattr(S, "_on_gpu", lambda: False)
    assert not S.fused_attention_is_linear(cfg, "bfloat16")
