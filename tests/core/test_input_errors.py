"""Every input error condition of the spec raises InputError naming argument, value, expectation."""

from __future__ import annotations

import numpy as np
import pytest

from nonlocal_core import InputError, NonLocalConfig, check_shapes, nonlocal_forward, random_weights

CFG = NonLocalConfig(4, spatial_dims=2, subsample=True)
W = random_weights(CFG, seed=0)
X = np.zeros((2, 4, 4, 6))


def forward(x=X, cfg=CFG, weights=W, **kw):
    return nonlocal_forward(x, weights, cfg, **kw)


CASES = [
    (
        "wrong rank",
        dict(x=np.zeros((2, 4, 6))),
        r"x has shape \(2, 4, 6\) \(rank 3\): expected rank 4, \(B, C, H, W\)",
    ),
    ("wrong channels", dict(x=np.zeros((2, 3, 4, 6))), r"x has 3 channels .* expected 4"),
    (
        "channels_last read as channels_first",
        dict(x=np.zeros((2, 4, 4, 6)), cfg=CFG.replace(data_format="channels_last")),
        r"x has 6 channels .*axis 3.* \(B, H, W, C\)",
    ),
    ("empty extent", dict(x=np.zeros((2, 4, 0, 6))), r"every spatial extent >= 1"),
    ("empty batch", dict(x=np.zeros((0, 4, 4, 6))), r"batch of at least 1"),
    (
        "window larger than extent",
        dict(x=np.zeros((2, 4, 1, 6))),
        r"x has spatial extent 1 on spatial axis 0, smaller than its subsample window 2",
    ),
    (
        "context window larger than extent",
        dict(context=np.zeros((2, 4, 4, 1))),
        r"context has spatial extent 1 on spatial axis 1",
    ),
    (
        "context batch",
        dict(context=np.zeros((3, 4, 4, 6))),
        r"context has batch 3 .* expected the batch of x, 2",
    ),
    (
        "context channels",
        dict(context=np.zeros((2, 5, 4, 6))),
        r"context has 5 channels .* expected 4",
    ),
    (
        "context rank",
        dict(context=np.zeros((2, 4, 4, 6, 1))),
        r"context has shape .* expected rank 4",
    ),
    (
        "mask shape",
        dict(key_mask=np.ones((2, 4, 6), dtype=bool)),
        r"key_mask has shape \(2, 4, 6\): expected \(2, 2, 3\) .* or \(2, 6\)",
    ),
    ("mask batch", dict(key_mask=np.ones((1, 6), dtype=bool)), r"key_mask has shape \(1, 6\)"),
    ("mask dtype", dict(key_mask=np.ones((2, 6))), r"key_mask has dtype float64: expected bool"),
    (
        "complex x",
        dict(x=np.zeros((2, 4, 4, 6), dtype=complex)),
        r"x has dtype complex128: expected a real",
    ),
    ("string context", dict(context=np.full((2, 4, 4, 6), "a")), r"context has dtype <U1"),
]


@pytest.mark.parametrize("what, kwargs, message", CASES, ids=[c[0] for c in CASES])
def test_invalid_input_raises_clear_error(what, kwargs, message):
    # spec: ERR-1 POOL-2 IO-2
    with pytest.raises(InputError, match=message):
        forward(**kwargs)


def test_context_required_when_its_channels_differ():
    # spec: IO-2
    cfg = NonLocalConfig(4, context_channels=6)
    with pytest.raises(
        InputError, match=r"context is required: .*context_channels=6 != in_channels=4"
    ):
        nonlocal_forward(np.zeros((1, 4, 2, 2)), random_weights(cfg), cfg)


def test_config_must_be_a_nonlocal_config():
    with pytest.raises(TypeError, match="config must be a NonLocalConfig, got dict"):
        nonlocal_forward(X, W, CFG.to_dict())


def test_weights_are_checked_before_computing():
    with pytest.raises(ValueError, match=r"missing weight\(s\) \['theta.bias'\]"):
        forward(weights={k: v for k, v in W.items() if k != "theta.bias"})


def test_symbolic_extents_are_accepted_and_not_compared():
    shapes = check_shapes(CFG, (None, 4, None, 6), key_mask_shape=(None, None, 3))
    assert shapes.num_queries is None and shapes.key_spatial == (None, 3)
