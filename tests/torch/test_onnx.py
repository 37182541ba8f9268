"""ONNX export: files written by `export_onnx` compute, in onnxruntime with default session
options on the CPU provider, what the eager block computes - at the example's size and at
others (dynamic batch and spatial sizes), for every instantiation, pooled or not, with a key
mask and with a context.

Each configuration is exported once (the dynamo exporter takes seconds) and run at all
`SIZES`. Comparisons are float32 to float32 with rtol = 1e-5 and atol = 1e-5 x max|z|:
z is O(1) here, and the two sides differ only by summation order over at most N' = 224
keys (observed: <= 3e-7 x max|z|); a wrong formulation is off by 1e-2 or more.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

import nonlocal_torch.onnx as nonlocal_onnx  # noqa: E402
from nonlocal_core import InputError, random_weights  # noqa: E402
from nonlocal_torch import NonLocalBlock  # noqa: E402
from nonlocal_torch.onnx import EXPORT_STRATEGIES, export_onnx  # noqa: E402

CHANNELS = 8
CONTEXT_CHANNELS = 6
# (B, H, W) of x; the first is the example the file is exported with.
SIZES = [(2, 8, 8), (3, 12, 10), (2, 16, 14)]
# The context's own (H', W') at each size: different from x's, so that N' != N.
CONTEXT_EXTENTS = [(10, 6), (7, 9), (12, 16)]
INSTANTIATIONS = ("embedded_gaussian", "gaussian", "dot_product", "concatenation")
# Strategies that do not export as they are (a size-dependent loop, aten.searchsorted, a
# choice made from the example's size): the blocks start with them, export_onnx must swap
# them for the export and put them back.
STARTING_STRATEGY = {
    "embedded_gaussian": "chunked",
    "gaussian": "chunked",
    "dot_product": "auto",
    "concatenation": "sorted",
}
# variant -> (subsample, context, key mask, opset). A context with a key mask is in
# test_attention_output_with_context_and_mask (one more export per instantiation would
# double this file's time). Masks go with opset 23, where an unmasked SDPA becomes one ONNX
# Attention and a masked one must not (onnxruntime's kernel refuses the broadcast mask).
VARIANTS = {
    "plain": (False, False, False, None),
    "pooled": (True, False, False, None),
    "masked": (True, False, True, 23),
    "context": (True, True, False, None),
}


def _block(instantiation: str, **fields) -> NonLocalBlock:
    """A float32 block holding random weights (a new block is the identity: useless here)."""
    block = NonLocalBlock(
        CHANNELS, instantiation=instantiation, strategy=STARTING_STRATEGY[instantiation], **fields
    )
    block.load_canonical_weights(random_weights(block.config, seed=1))
    return block.eval()


def _context_channels(instantiation: str) -> int:
    return CHANNELS if instantiation == "gaussian" else CONTEXT_CHANNELS


def _inputs(block: NonLocalBlock, shape, context_extent=None, mask=False, seed=0) -> dict:
    """x of `shape`, a context of `context_extent` and a key mask over the pooled key grid
    (its last batch item all False: those queries see no key, y = 0) when asked."""
    gen = torch.Generator().manual_seed(seed)
    inputs = {"x": torch.randn(*shape, generator=gen)}
    keys = shape[2:]
    if context_extent is not None:
        inputs["context"] = torch.randn(
            shape[0], block.config.context_channels, *context_extent, generator=gen
        )
        keys = context_extent
    if mask:
        pooled = block.config.pooled_extent(keys)
        key_mask = torch.rand(shape[0], *pooled, generator=gen) > 0.3
        key_mask[-1] = False
        inputs["key_mask"] = key_mask
    return inputs


def _session(path) -> ort.InferenceSession:
    # Default SessionOptions on purpose: that is what users get, and where the optimiser's
    # miscompile showed.
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _assert_parity(session, block, inputs: dict, label: str, attention=False) -> None:
    with torch.no_grad():
        want = block(inputs.get("x"), inputs.get("context"), inputs.get("key_mask"), attention)
    want = [t.numpy() for t in (want if attention else (want,))]
    got = session.run(None, {name: t.numpy() for name, t in inputs.items()})
    for name, g, w in zip(("z", "attention"), got, want, strict=False):
        scale = float(np.abs(w).max())
        np.testing.assert_allclose(
            g, w, rtol=1e-5, atol=1e-5 * scale, err_msg=f"{label}: {name} differs"
        )


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_onnxruntime_computes_the_block_at_every_size(tmp_path, instantiation, variant):
    pooled, with_context, masked, opset = VARIANTS[variant]
    block = _block(
        instantiation,
        subsample=pooled,
        # The Gaussian dots raw features: its context has x's channels.
        context_channels=_context_channels(instantiation) if with_context else None,
    )
    cases = [
        _inputs(block, (b, CHANNELS, h, w), extent if with_context else None, masked, seed=i)
        for i, ((b, h, w), extent) in enumerate(zip(SIZES, CONTEXT_EXTENTS, strict=True))
    ]
    example = cases[0]
    path = export_onnx(
        block,
        tmp_path / "block.onnx",
        example["x"],
        context=example.get("context"),
        key_mask=example.get("key_mask"),
        opset=opset,
    )
    assert block.strategy == STARTING_STRATEGY[instantiation]  # restored
    if opset is not None:
        assert onnx.load(path).opset_import[0].version == opset
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == list(example)
    assert [o.name for o in session.get_outputs()] == ["z"]
    for inputs in cases:
        _assert_parity(session, block, inputs, f"{instantiation}/{variant} at {inputs['x'].shape}")


@pytest.mark.parametrize(
    ("fields", "shapes", "flat_mask"),
    [
        # Videos, channels last, pooled (1, 2, 2) before the projections, odd sizes, and a
        # key mask in its flattened (B, N') form.
        (
            {
                "spatial_dims": 3,
                "instantiation": "concatenation",
                "subsample": True,
                "pool_position": "before_projection",
                "data_format": "channels_last",
            },
            [(2, 2, 6, 6, CHANNELS), (3, 3, 8, 4, CHANNELS), (2, 3, 7, 5, CHANNELS)],
            True,
        ),
        # Sequences, no norm, no residual.
        (
            {"spatial_dims": 1, "instantiation": "dot_product", "norm": None, "residual": False},
            [(2, CHANNELS, 9), (3, CHANNELS, 14)],
            False,
        ),
    ],
    ids=["3d-channels-last-flat-mask", "1d-no-norm"],
)
def test_other_layouts(tmp_path, fields, shapes, flat_mask):
    block = _block(fields.pop("instantiation"), **fields)
    channels_last = block.config.data_format == "channels_last"
    gen = torch.Generator().manual_seed(0)
    cases = []
    for shape in shapes:
        inputs = {"x": torch.randn(*shape, generator=gen)}
        if flat_mask:
            keys = block.config.pooled_extent(shape[1:-1] if channels_last else shape[2:])
            inputs["key_mask"] = torch.rand(shape[0], int(np.prod(keys)), generator=gen) > 0.3
        cases.append(inputs)
    example = cases[0]
    path = export_onnx(
        block, tmp_path / "block.onnx", example["x"], key_mask=example.get("key_mask")
    )
    session = _session(path)
    names = ["time", "height", "width"] if block.config.spatial_dims == 3 else ["length"]
    dims = [i.shape for i in session.get_inputs()]
    x_dims = ["batch", *names, CHANNELS] if channels_last else ["batch", CHANNELS, *names]
    assert dims == ([x_dims, ["batch", "keys"]] if flat_mask else [x_dims])
    for inputs in cases:
        _assert_parity(session, block, inputs, f"{fields} at {inputs['x'].shape}")


def test_attention_output_with_context_and_mask(tmp_path):
    block = _block("concatenation", subsample=True, context_channels=CONTEXT_CHANNELS)
    cases = [
        _inputs(block, (b, CHANNELS, h, w), extent, mask=True, seed=i)
        for i, ((b, h, w), extent) in enumerate(zip(SIZES, CONTEXT_EXTENTS, strict=True))
    ]
    example = cases[0]
    path = export_onnx(
        block,
        tmp_path / "block.onnx",
        example["x"],
        context=example["context"],
        key_mask=example["key_mask"],
        return_attention=True,
    )
    session = _session(path)
    assert [o.name for o in session.get_outputs()] == ["z", "attention"]
    # The mask's axes are the pooled context grid's: named after it, not after x's.
    assert session.get_inputs()[2].shape == ["batch", "key_height", "key_width"]
    for inputs in cases:
        _assert_parity(session, block, inputs, f"attention at {inputs['x'].shape}", True)


def test_static_export_fixes_every_size(tmp_path):
    block = _block("dot_product")
    x = torch.randn(1, CHANNELS, 5, 3)  # sizes of 1 are fine when nothing is dynamic
    model = onnx.load(export_onnx(block, tmp_path / "block.onnx", x, dynamic=False))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, CHANNELS, 5, 3]
    _assert_parity(_session(tmp_path / "block.onnx"), block, {"x": x}, "static")


def test_every_instantiation_has_an_export_strategy():
    assert set(EXPORT_STRATEGIES) == set(INSTANTIATIONS)


def test_docstring_examples():
    result = doctest.testmod(nonlocal_onnx, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# Errors: raised before anything is exported ------------------------------------------------


def test_training_mode_is_refused(tmp_path):
    block = _block("dot_product").train()
    with pytest.raises(ValueError, match=r"training mode.*block\.eval\(\)"):
        export_onnx(block, tmp_path / "b.onnx", torch.randn(2, CHANNELS, 4, 4))
    assert not (tmp_path / "b.onnx").exists()


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"block": torch.nn.Identity()}, TypeError, "block must be a nonlocal_torch.NonLocalBl"),
        ({"example_input": np.zeros((2, 8, 4, 4))}, TypeError, "x must be a torch.Tensor"),
        ({"context": [1.0]}, TypeError, "context must be a torch.Tensor, got list"),
        ({"dynamic": "yes"}, TypeError, "dynamic='yes' is invalid: expected True or False"),
        ({"return_attention": 1}, TypeError, "return_attention=1 is invalid"),
        ({"opset": 17}, ValueError, "opset=17 is invalid: expected an int >= 18"),
        ({"opset": True}, ValueError, "opset=True is invalid"),
        ({"path": 3}, TypeError, "path must be a str or os.PathLike, got int"),
        ({"path": "/no/such/dir/b.onnx"}, ValueError, "directory '/no/such/dir' does not exist"),
        # The block's own input checks, before the exporter would bury them in its report.
        ({"example_input": torch.randn(2, 5, 4, 4)}, InputError, "x has 5 channels"),
        # Sizes 0 and 1 would be fixed by the exporter: refused, not silently specialised.
        (
            {"example_input": torch.randn(1, 8, 4, 4)},
            ValueError,
            r"x has shape \(1, 8, 4, 4\): dynamic=True needs an example size of at least 2 "
            "on axis 0",
        ),
    ],
)
def test_argument_errors_name_the_argument(tmp_path, change, error, message):
    arguments = {
        "block": _block("embedded_gaussian"),
        "path": tmp_path / "b.onnx",
        "example_input": torch.randn(2, CHANNELS, 4, 4),
    }
    options = {k: change.pop(k) for k in list(change) if k not in arguments}
    arguments.update(change)
    with pytest.raises(error, match=message):
        export_onnx(*arguments.values(), **options)
