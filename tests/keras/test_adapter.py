"""The conformance adapter as the suite drives it: protocol, capabilities, the jitted JAX
path (the suite's default) against the eager one, running statistics, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from nonlocal_core import INSTANTIATIONS, InputError, NonLocalConfig, random_weights
from nonlocal_keras.conformance import KerasAdapter

from .conftest import BACKEND, make_input

Adapter = pytest.importorskip("nonlocal_conformance.adapter").Adapter


def test_protocol_and_capabilities(adapter):
    assert isinstance(adapter, Adapter)
    assert adapter.name == f"keras-{BACKEND}"
    assert adapter.capabilities.gradients
    assert adapter.capabilities.dtypes == {"float64", "float32", "bfloat16", "float16"}
    assert adapter.options() == {"strategy": "auto"}
    assert set(adapter.versions()) == {"keras", BACKEND}


def test_forced_strategies_take_the_first_each_block_can_run(monkeypatch):
    monkeypatch.setenv("NONLOCAL_KERAS_STRATEGY", "sdpa,sorted,chunked")
    forced = KerasAdapter()
    assert forced.options()["strategy"] == "sdpa,sorted,chunked"
    chosen = {}
    for instantiation in INSTANTIATIONS:
        cfg = NonLocalConfig(4, spatial_dims=1, instantiation=instantiation)
        for dtype in ("float64", "float32"):
            block = forced.build(cfg, random_weights(cfg), dtype=dtype, device="cpu")
            chosen[instantiation, dtype] = block.strategy
    # sdpa is exact only below float64 (and, off PyTorch, with keys as wide as values).
    assert chosen["embedded_gaussian", "float64"] == "chunked"
    assert chosen["embedded_gaussian", "float32"] == "sdpa"
    assert chosen["gaussian", "float32"] == ("sdpa" if BACKEND == "torch" else "chunked")
    assert chosen["concatenation", "float64"] == "sorted"
    assert chosen["dot_product", "float64"] == "auto"
    monkeypatch.setenv("NONLOCAL_KERAS_STRATEGY", "fast")
    with pytest.raises(ValueError, match=r"NONLOCAL_KERAS_STRATEGY='fast': unknown \['fast'\]"):
        KerasAdapter()


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_default_forward_path_equals_eager_path(adapter, instantiation):
    # On JAX the default adapter jits the whole forward; elsewhere both are eager.
    default = KerasAdapter()
    assert default.jit_forward == (BACKEND == "jax")
    cfg = NonLocalConfig(4, spatial_dims=2, instantiation=instantiation, subsample=True)
    weights = random_weights(cfg, seed=21)
    x = make_input(cfg, seed=22)
    mask = np.random.default_rng(23).random((2, 2, 2)) > 0.3
    jitted = default.build(cfg, weights, dtype="float64", device="cpu")
    eager = adapter.build(cfg, weights, dtype="float64", device="cpu")
    for training in (False, True):
        for attention in (False, True):
            a = default.forward(
                jitted, x, key_mask=mask, training=training, return_attention=attention
            )
            b = adapter.forward(
                eager, x, key_mask=mask, training=training, return_attention=attention
            )
            np.testing.assert_allclose(a.z, b.z, rtol=0, atol=1e-13)
            if attention:
                np.testing.assert_allclose(a.attention, b.attention, rtol=0, atol=1e-13)
    # Training calls updated the running statistics the same way on both paths.
    for name, value in default.export_weights(jitted).items():
        np.testing.assert_allclose(value, adapter.export_weights(eager)[name], atol=1e-13)


def test_bad_inputs_raise_value_errors_naming_the_argument():
    adapter = KerasAdapter()
    cfg = NonLocalConfig(4, spatial_dims=1)
    block = adapter.build(cfg, random_weights(cfg), dtype="float32", device="cpu")
    x = make_input(cfg)
    with pytest.raises(InputError, match="x has dtype complex64"):
        adapter.forward(block, x.astype(np.complex64))
    with pytest.raises(InputError, match="key_mask has dtype"):
        adapter.forward(block, x, key_mask=np.ones((2, 7), dtype=np.int32))
    with pytest.raises(InputError, match="key_mask has shape"):
        adapter.forward(block, x, key_mask=np.ones((2, 6), dtype=bool))
    with pytest.raises(ValueError, match="missing weight"):
        adapter.build(cfg, {}, dtype="float32", device="cpu")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("instantiation", ["gaussian", "embedded_gaussian"])
def test_half_precision_single_position_compiles(instantiation, dtype):
    # One query, one key, one channel: on JAX, the fused attention's mixed-precision dot
    # failed to compile on XLA:CPU inside jit (found by the conformance suite).
    adapter = KerasAdapter()
    cfg = NonLocalConfig(1, spatial_dims=1, instantiation=instantiation)
    weights = {k: v.astype(np.float32) for k, v in random_weights(cfg, seed=1).items()}
    block = adapter.build(cfg, weights, dtype=dtype, device="cpu")
    x = np.full((1, 1, 1), 0.125, dtype=np.float32)
    out = adapter.forward(block, x)
    assert out.dtype == dtype and np.isfinite(out.z).all()
    grads = adapter.gradients(block, x, np.ones_like(x))
    assert all(np.isfinite(g).all() for g in grads.values())


@pytest.mark.skipif(BACKEND != "jax", reason="JAX compiles a program per shape for each op")
def test_building_a_block_draws_no_initial_weights_on_jax(adapter):
    # The suite builds over a thousand blocks whose weights it replaces at once: on JAX the
    # initialisers' random draws compiled ~280 programs per ci run (see KerasAdapter.build).
    import jax.monitoring

    compiled = []

    def listen(event, seconds, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(kwargs.get("fun_name", ""))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        cfg = NonLocalConfig(7, spatial_dims=3, inter_channels=3, instantiation="concatenation")
        weights = random_weights(cfg, seed=5)
        block = adapter.build(cfg, weights, dtype="float32", device="cpu")
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert block.canonical_weights().keys() == weights.keys()
    drawn = [name for name in compiled if "convert_element_type" not in name]
    assert drawn == [], f"building compiled {drawn}"
