"""Export a `NonLocalBlock` to ONNX that onnxruntime computes correctly at every size.

`export_onnx` wraps ``torch.onnx.export(..., dynamo=True)`` with what a plain call gets
wrong for this block (see the "Compile and export" documentation page):

- the block's strategy is swapped, for the export only, for one that exports with symbolic
  sizes and that onnxruntime computes correctly (`export_strategy`): ``sorted`` has no ONNX
  translation (``aten.searchsorted``; ``auto`` takes it too while tracing), ``chunked``
  loops over a size-dependent number of query chunks, and a masked SDPA becomes (from opset
  23) an ONNX Attention whose broadcast mask onnxruntime's CPU kernel refuses;
- a matrix-vector product is written as a matrix-matrix product: onnxruntime's
  ``MatmulTransposeFusion`` (default session options, CPU) folds ``Transpose`` into a
  following ``MatMul`` whose right operand is a vector and computes the wrong numbers,
  which broke the concatenation's ``w_theta . theta_i`` (see ``_exporter_parts``);
- batch and spatial dimensions are dynamic and named, and an example that would let the
  exporter fix one of them (a size of 1) is refused rather than silently specialised;
- the model is checked with ``onnx.checker`` (full check, with shape inference).

The ``onnx`` and ``onnxscript`` packages are imported on first use.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nonlocal_core.config import require_flag

from .block import NonLocalBlock

__all__ = ["EXPORT_STRATEGIES", "export_onnx", "export_strategy"]

# The strategy each instantiation is exported with (without a key mask: see
# `export_strategy`). All strategies compute the same y, so the file does not depend on
# `block.strategy`; these export with symbolic sizes and onnxruntime (default options)
# computes them correctly:
# - softmax: "sdpa" becomes one ONNX Attention from opset 23 (decomposed before);
#   "chunked" loops over ceil(N / chunk) query chunks, a Python loop the exporter would
#   unroll for the example's N.
# - dot product: "associative" needs (d, C') memory where "pairwise" builds (B, N, N').
# - concatenation: "pairwise" ((B, N, N') scalars, as any ONNX attention); "sorted" needs
#   aten.searchsorted, which has no ONNX translation (ONNX has no search operator).
EXPORT_STRATEGIES = {
    "embedded_gaussian": "sdpa",
    "gaussian": "sdpa",
    "dot_product": "associative",
    "concatenation": "pairwise",
}
# The opset torch.onnx's translations are written for. For an older one it builds opset 18
# and converts down with ONNX's version converter, which fails on this block's graphs at
# some opsets (14: reduction axes computed at run time cannot become attributes) and then
# leaves the file at 18 with a log line only: older opsets are refused, not half supported.
MIN_OPSET = 18
# Names of the spatial axes in the file's symbolic shapes, per spatial_dims.
_AXIS_NAMES = {1: ("length",), 2: ("height", "width"), 3: ("time", "height", "width")}


def export_onnx(
    block: NonLocalBlock,
    path: str | os.PathLike,
    example_input: Tensor,
    *,
    context: Tensor | None = None,
    key_mask: Tensor | None = None,
    dynamic: bool = True,
    opset: int | None = None,
    return_attention: bool = False,
) -> Path:
    """Write `block` (in evaluation mode) to the ONNX file `path`; return it as a Path.

    The file's inputs are ``x`` (and ``context``, ``key_mask`` when examples of them are
    given), its outputs ``z`` (and ``attention``, (B, N, N'), with `return_attention`).
    With `dynamic` (the default) the batch and spatial dimensions of every input are
    symbolic - named ``batch``, ``height``, ``width`` (``time``, ``length``),
    ``context_height`` etc. for the context, ``key_height`` etc. (``keys`` for a (B, N')
    mask) for the key mask - so the file runs at any size; the channel dimensions stay
    fixed. `dynamic` dimensions need an example size of at least 2 (the exporter would fix
    sizes 0 and 1). Without `dynamic` every size is the example's.

    `block.strategy` is replaced during the export by `export_strategy` (every strategy
    computes the same function) and restored afterwards, as is everything else about the
    block. `opset` is the ONNX opset (at least 18; None: the exporter's default).

    Raises ValueError for a block in training mode (the file computes inference: batch
    statistics would be folded in as constants), TypeError/ValueError naming the argument
    for bad arguments, and `nonlocal_core.InputError` for inputs the block refuses.

    Example:
        >>> import onnxruntime, tempfile
        >>> from nonlocal_core import random_weights
        >>> block = NonLocalBlock(8, subsample=True).eval()  # not the identity: load weights
        >>> block.load_canonical_weights(random_weights(block.config, seed=0))
        >>> path = export_onnx(block, Path(tempfile.mkdtemp()) / "nl.onnx",
        ...                    torch.randn(2, 8, 6, 6))
        >>> session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        >>> [(i.name, i.shape) for i in session.get_inputs()]
        [('x', ['batch', 8, 'height', 'width'])]
        >>> x = torch.randn(3, 8, 10, 12)  # another size
        >>> z = session.run(None, {"x": x.numpy()})[0]
        >>> bool(torch.allclose(torch.from_numpy(z), block(x), atol=1e-5))
        True
    """
    _check_block(block)
    inputs = {"x": example_input, "context": context, "key_mask": key_mask}
    for name, value in inputs.items():
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    dynamic = require_flag(dynamic, "dynamic")
    return_attention = require_flag(return_attention, "return_attention")
    _check_opset(opset)
    path = _check_path(path)
    onnx, translations = _exporter_parts()

    # The eager forward validates every input with the block's own messages (before the
    # exporter would wrap them in its report) and shows the block runs at all.
    with torch.no_grad():
        block(example_input, context, key_mask)
    given = {name: value for name, value in inputs.items() if value is not None}
    dynamic_shapes = _dynamic_shapes(block, given) if dynamic else None
    kwargs = {name: value for name, value in given.items() if name != "x"}
    # A bool argument to export would cost the file its axis names (the exporter then falls
    # back to s0, s1, ...): a wrapper takes the flag instead (its parameters get "block.").
    module = _WithAttention(block).eval() if return_attention else block
    with _export_strategy(block, key_mask is not None), warnings.catch_warnings():
        # One Dim object for the batch axis of every input is how torch.export says they
        # are equal; the ONNX exporter then warns that it names the axis only once.
        warnings.filterwarnings("ignore", message="# The axis name: .* will not be used")
        program = torch.onnx.export(
            module,
            (example_input,),
            kwargs=kwargs,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            custom_translation_table=translations,
            output_names=["z", "attention"] if return_attention else ["z"],
            verbose=False,
        )
    model = program.model_proto
    if dynamic:
        _check_symbolic(model, given, block)
        _name_key_axes(model, block, given.get("key_mask"))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


class _WithAttention(torch.nn.Module):
    """`block` returning (z, attention): forward takes only the tensors."""

    def __init__(self, block: NonLocalBlock) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor, context: Tensor | None = None, key_mask: Tensor | None = None):
        return self.block(x, context, key_mask, return_attention=True)


# Argument checks ------------------------------------------------------------------------------


def _check_block(block: Any) -> None:
    if not isinstance(block, NonLocalBlock):
        raise TypeError(f"block must be a nonlocal_torch.NonLocalBlock, got {type(block).__name__}")
    if block.training:
        raise ValueError(
            "block is in training mode: export_onnx writes inference (BN with its running "
            "statistics; training-mode batch statistics would be baked in). Call block.eval() "
            "first"
        )


def _check_opset(opset: Any) -> None:
    if opset is None:
        return
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(
            f"opset={opset!r} is invalid: expected an int >= {MIN_OPSET} (the opset torch.onnx "
            "translates to; older ones need ONNX's version converter, which fails on this "
            "block's graphs) or None for the exporter's default"
        )


def _check_path(path: Any) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(
            f"path={str(path)!r} is invalid: directory {str(path.parent)!r} does not exist"
        )
    return path


# Export ------------------------------------------------------------------------------------


def _exporter_parts() -> tuple[Any, dict]:
    """The onnx module and the translation table, or ImportError naming what to install."""
    try:
        import onnx
        import onnxscript
    except ImportError as error:
        raise ImportError(
            f"export_onnx needs the onnx and onnxscript packages ({error}): "
            "pip install onnx onnxscript"
        ) from None
    op = onnxscript.opset18

    def _matmul(self, other):
        # onnxruntime's MatmulTransposeFusion folds a Transpose feeding MatMul's left side
        # into FusedMatMul(transA=1) even when the right side is a vector, and then reads the
        # left side untransposed: wrong numbers under default session options (see the
        # docs' "Upstream problems"). Multiplying by the (k, 1) matrix instead and squeezing
        # the result is the same product, and a pattern the fusion handles correctly.
        if other.shape is not None and len(other.shape) == 1:
            axes = op.Constant(value_ints=[-1])
            return op.Squeeze(op.MatMul(self, op.Unsqueeze(other, axes)), axes)
        return op.MatMul(self, other)

    aten = torch.ops.aten
    # aten.mv too, in case a later torch decomposes the matrix-vector matmul into it.
    return onnx, {aten.matmul.default: _matmul, aten.mv.default: _matmul}


def export_strategy(instantiation: str, masked: bool) -> str:
    """The strategy `export_onnx` exports `instantiation` with, with a key mask or without.

    `EXPORT_STRATEGIES`, except for a masked softmax: SDPA with a mask becomes, from opset
    23, an ONNX Attention whose (B, 1, 1, N') mask onnxruntime's CPU kernel refuses (it
    broadcasts the mask over batch and heads only, not over queries; see the docs'
    "Upstream problems"). The pairwise softmax is what SDPA decomposes to before opset 23.

    Example:
        >>> export_strategy("gaussian", masked=False), export_strategy("gaussian", masked=True)
        ('sdpa', 'pairwise')
    """
    if masked and EXPORT_STRATEGIES[instantiation] == "sdpa":
        return "pairwise"
    return EXPORT_STRATEGIES[instantiation]


@contextlib.contextmanager
def _export_strategy(block: NonLocalBlock, masked: bool) -> Iterator[None]:
    saved = block.strategy
    block.strategy = export_strategy(block.config.instantiation, masked)
    try:
        yield
    finally:
        block.strategy = saved


def _spatial_axes(block: NonLocalBlock, ndim: int) -> range:
    """The spatial axes of a (B, C, *S) or (B, *S, C) input of `ndim` dimensions."""
    if block.config.data_format == "channels_last":
        return range(1, ndim - 1)
    return range(2, ndim)


def _dynamic_shapes(block: NonLocalBlock, given: dict[str, Tensor]) -> dict[str, dict]:
    """torch.export dims: batch shared by all inputs, x's and the context's spatial axes
    named, the key mask's left to the exporter (they are the pooled context grid, a floor
    division of the context's sizes that named dims cannot express)."""
    Dim = torch.export.Dim
    batch = Dim("batch")
    names = _AXIS_NAMES[block.config.spatial_dims]
    shapes: dict[str, dict] = {}
    for name, tensor in given.items():
        if name == "key_mask":
            axes = {axis: Dim.AUTO for axis in range(1, tensor.dim())}
        else:
            prefix = "" if name == "x" else f"{name}_"
            axes = {
                axis: Dim(prefix + names[i])
                for i, axis in enumerate(_spatial_axes(block, tensor.dim()))
            }
        shapes[name] = {0: batch, **axes}
        for axis in shapes[name]:
            if tensor.shape[axis] < 2:
                raise ValueError(
                    f"{name} has shape {tuple(tensor.shape)}: dynamic=True needs an example "
                    f"size of at least 2 on axis {axis} (the exporter fixes sizes 0 and 1 as "
                    "constants); pass a larger example, or dynamic=False for a fixed-size file"
                )
    return shapes


def _check_symbolic(model: Any, given: dict[str, Tensor], block: NonLocalBlock) -> None:
    """RuntimeError if the exporter fixed a dimension meant to be dynamic (it does so
    silently where the traced code depends on a size's value)."""
    dims = {i.name: i.type.tensor_type.shape.dim for i in model.graph.input}
    for name, tensor in given.items():
        channel = (
            None
            if name == "key_mask"
            else (tensor.dim() - 1 if block.config.data_format == "channels_last" else 1)
        )
        fixed = [
            axis
            for axis, dim in enumerate(dims[name])
            if axis != channel and not dim.HasField("dim_param")
        ]
        if fixed:
            raise RuntimeError(
                f"the exporter fixed axes {fixed} of {name} to the example's sizes "
                f"{[tuple(tensor.shape)[a] for a in fixed]}: the file would refuse other "
                "sizes. Please report this with the block's config"
            )


def _name_key_axes(model: Any, block: NonLocalBlock, key_mask: Tensor | None) -> None:
    """Rename the exporter's ``s74``-style symbols of the key mask's axes to ``key_height``
    etc. (``keys`` for a flattened (B, N') mask), everywhere in the graph, so the file
    reads as its inputs are documented. Axes the exporter tied to a named one keep that
    name. Only names change: ONNX dim_params are labels, not constraints."""
    if key_mask is None:
        return
    mask_input = next(i for i in model.graph.input if i.name == "key_mask")
    spatial = _AXIS_NAMES[block.config.spatial_dims]
    wanted = ["keys"] if key_mask.dim() == 2 else [f"key_{name}" for name in spatial]
    renames = {
        dim.dim_param: new
        for dim, new in zip(list(mask_input.type.tensor_type.shape.dim)[1:], wanted, strict=True)
        if re.fullmatch(r"s\d+", dim.dim_param)
    }
    if not renames:
        return
    # Whole symbols only, inside expressions too ("s59*s74" -> "key_height*key_width").
    symbol = re.compile(r"\b(?:" + "|".join(map(re.escape, renames)) + r")\b")
    graph = model.graph
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = symbol.sub(lambda m: renames[m.group()], dim.dim_param)
