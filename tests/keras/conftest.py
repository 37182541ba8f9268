"""Fixtures of the Keras backend tests; run once per backend, each in its own process:
``KERAS_BACKEND=tensorflow|jax|torch pytest tests/keras``."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from nonlocal_core import NonLocalConfig, random_weights
from nonlocal_keras import NonLocalBlock
from nonlocal_keras.layer import to_numpy as _to_numpy

BACKEND = keras.backend.backend()
EXTENTS = {1: (7,), 2: (5, 4), 3: (3, 4, 4)}


def to_numpy(tensor) -> np.ndarray:
    """Any backend's tensor (grad-tracking or not) as a float64 NumPy array."""
    return np.asarray(_to_numpy(tensor), np.float64)


def make_input(config: NonLocalConfig, batch: int = 2, seed: int = 0, extent=None, channels=None):
    """A random input of `config`'s layout."""
    rng = np.random.default_rng(seed)
    extent = EXTENTS[config.spatial_dims] if extent is None else extent
    c = config.in_channels if channels is None else channels
    shape = (batch, c, *extent) if config.data_format == "channels_first" else (batch, *extent, c)
    return rng.normal(size=shape)


def loaded_block(config: NonLocalConfig, seed: int = 0, **kwargs) -> tuple[NonLocalBlock, dict]:
    """A layer holding `random_weights(config, seed)`, and those weights."""
    weights = random_weights(config, seed=seed)
    block = NonLocalBlock(**config.to_dict(), **kwargs)
    block.load_canonical_weights(weights)
    return block, weights


@pytest.fixture(scope="session")
def adapter():
    """The conformance adapter for this process's backend (on JAX it enables float64).

    Eager forward passes: these tests reuse a few shapes across many configs, where eager
    JAX (compiled per operation) is several times faster than one jit per config.
    `test_adapter.py` checks the jitted path the conformance suite uses.
    """
    from nonlocal_keras.conformance import KerasAdapter

    return KerasAdapter(jit_forward=False)


def pytest_configure(config):
    # Keras's own convert_to_numpy calls np.array() on JAX/torch arrays, which NumPy 2 flags;
    # the warning is about Keras internals, not this package (whose modules stay "error").
    config.addinivalue_line(
        "filterwarnings",
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning",
    )
