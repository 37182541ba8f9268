"""The block under compilers, exporters and tracers, against eager at several sizes.

One compiled module, one exported program, one FX graph per configuration, each run at
every size of `SIZES` - sizes other than the one traced included - and compared with the
eager block (float64, tight tolerances). The traced size comes first and has distinct
extents: dynamo's duck sizing would otherwise give equal extents one symbol (B = C = 8 say)
and specialise both when the channel count is checked.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch.export import Dim

from nonlocal_core import INSTANTIATIONS, NonLocalConfig, random_weights
from nonlocal_torch import NonLocalBlock
from nonlocal_torch.functional import attend_parts
from nonlocal_torch.strategies import TRACED_STRATEGIES, choose_strategy, is_tracing

C = 8
SIZES = [(3, 12, 10), (2, 8, 8), (2, 16, 14)]  # (B, H, W); even H, W for pooled key masks
CONTEXT = 6  # context grids are (H + 6, W + 4): other extents than x's
CASES = [(inst, pooled) for inst in INSTANTIATIONS for pooled in (False, True)]
CASE_IDS = [f"{inst}-{'pooled' if pooled else 'full'}" for inst, pooled in CASES]
# float64 throughout: what differs is the order of a few hundred additions.
TOL = {"rtol": 1e-10, "atol": 1e-12}
# Gradients: some are zero in exact arithmetic (BN in training cancels per-channel shifts, so
# d/d bias of g and of W_z are 0) and come out as roundoff of the large terms they cancel:
# absolute tolerance relative to the largest gradient.
GRAD_RTOL = 1e-10


def _block(instantiation: str, pooled: bool, strategy="auto", **kwargs) -> NonLocalBlock:
    config = NonLocalConfig(C, instantiation=instantiation, subsample=pooled, **kwargs)
    block = NonLocalBlock.from_config(config, strategy=strategy, dtype=torch.float64)
    block.load_canonical_weights(random_weights(config, seed=3))  # far from the identity
    return block


def _inputs(size, seed, *, context=False, mask=None, pooled=False):
    """x (B, C, H, W), and a context (B, C, H + 6, W + 4) and/or grid key mask over the key
    grid (pooled 2x2 when `pooled`), with one item whose keys are all masked."""
    b, h, w = size
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, C, h, w, dtype=torch.float64, generator=gen)
    kwargs = {}
    if context:
        h, w = h + CONTEXT, w + 4
        kwargs["context"] = torch.randn(b, C, h, w, dtype=torch.float64, generator=gen)
    if mask:
        grid = (h // 2, w // 2) if pooled else (h, w)
        key_mask = torch.rand(b, *grid, generator=gen) > 0.3
        key_mask[-1] = False  # y = 0 for that item's queries
        kwargs["key_mask"] = key_mask
    return x, kwargs


def _dims(pooled: bool, *, context=False, mask=False):
    """Dynamic batch and spatial dims. Pooled extents must be >= 2 after pooling (PyTorch
    specialises 0 and 1), so a pooled axis with window 2 needs min 4; a grid key mask
    shares the key grid's Dims, the pooled grid's through derived ``2 * Dim``."""
    batch = Dim("batch", min=1, max=64)

    def grid(prefix):
        if pooled:
            hk, wk = Dim(f"{prefix}h_keys", min=2, max=128), Dim(f"{prefix}w_keys", min=2, max=128)
            return (2 * hk, 2 * wk), (hk, wk)
        h, w = Dim(f"{prefix}h", min=2, max=256), Dim(f"{prefix}w", min=2, max=256)
        return (h, w), (h, w)

    (xh, xw), keys = grid("x_")
    dims = {"x": {0: batch, 2: xh, 3: xw}}
    if context:
        (ch, cw), keys = grid("ctx_")
        dims["context"] = {0: batch, 2: ch, 3: cw}
    if mask:
        dims["key_mask"] = {0: batch, 1: keys[0], 2: keys[1]}
    return dims


def _grads(module, reference, x, kwargs):
    """Outputs (by name) and d(loss)/d(x and every parameter of `reference`), by name, for a
    fixed loss weighting."""
    x = x.clone().requires_grad_(True)
    outputs = module(x, **kwargs)
    outputs = outputs if isinstance(outputs, dict) else {"z": outputs}
    loss = sum(
        (z * torch.linspace(-1.0, 1.0, z.numel(), dtype=z.dtype).reshape(z.shape)).sum()
        for z in outputs.values()
    )
    names, params = zip(*reference.named_parameters())
    grads = torch.autograd.grad(loss, [x, *params])
    return outputs, dict(zip(["x", *names], grads))


# torch.compile ------------------------------------------------------------------------------
#
# One compile serves several cases side by side (`_Blocks`), and every size.
# AOTAutograd without inductor ("aot_eager") compiles the forward and backward graphs of
# every case; there the no-recompilation check is about this code. Inductor's own lowering
# of a convolution's input gradient specialises H and W in torch 2.13
# (convolution_backward_lowering guards the gradient's strides to ints), so an inductor
# training graph recompiles per size whatever the block does: one test runs it at one size.
# Inductor's forward runs for the pooled cases, whose graphs hold the unpooled ones' ops
# plus the pooling (on 2 cores its C++ compilation costs about 3 s per block).


class _Blocks(torch.nn.Module):
    """The blocks of `cases` on the same inputs; outputs by case id."""

    def __init__(self, cases=CASES):
        super().__init__()
        blocks = {f"{i}-{'pooled' if p else 'full'}": _block(i, p) for i, p in cases}
        self.blocks = torch.nn.ModuleDict(blocks)

    def forward(self, x, **kwargs):
        return {name: block(x, **kwargs) for name, block in self.blocks.items()}


def _compare(got, want, size):
    for name, z in want.items():
        torch.testing.assert_close(got[name], z, **TOL, msg=lambda m, n=name: f"{n} {size}: {m}")


def _compare_grads(got, want, size):
    (z_c, grads_c), (z_e, grads_e) = got, want
    _compare(z_c, z_e, size)
    scale = max(float(g.abs().max()) for g in grads_e.values())
    for name, g_e in grads_e.items():
        torch.testing.assert_close(
            grads_c[name],
            g_e,
            rtol=GRAD_RTOL,
            atol=GRAD_RTOL * scale,
            msg=lambda m, n=name: f"d/d{n} at {size}: {m}",
        )


def test_compile_dynamic_inference_matches_eager_without_recompiling():
    blocks = _Blocks([(inst, True) for inst in INSTANTIATIONS]).eval()
    torch._dynamo.reset()
    compiled = torch.compile(blocks, dynamic=True, fullgraph=True)
    for i, size in enumerate(SIZES):
        x, _ = _inputs(size, seed=i)
        # Every size after the first must run the first graph.
        with torch._dynamo.config.patch(error_on_recompile=i > 0), torch.no_grad():
            _compare(compiled(x), blocks(x), size)
    torch._dynamo.reset()


def test_compile_dynamic_training_matches_eager_without_recompiling():
    blocks = _Blocks().train()  # batch statistics: BN's training graph
    torch._dynamo.reset()
    compiled = torch.compile(blocks, backend="aot_eager", dynamic=True, fullgraph=True)
    for i, size in enumerate(SIZES):
        x, _ = _inputs(size, seed=i)
        with torch._dynamo.config.patch(error_on_recompile=i > 0):
            got = _grads(compiled, blocks, x, {})
        _compare_grads(got, _grads(blocks, blocks, x, {}), size)
    torch._dynamo.reset()


def test_compile_inductor_forward_and_backward_match_eager():
    # The softmax is the case inductor crashed on (SDPA operands that are views of a
    # contiguous tensor, see softmax_attention). One size: inductor specialises (see above).
    block = _block("embedded_gaussian", True).train()
    torch._dynamo.reset()
    compiled = torch.compile(block, dynamic=True, fullgraph=True)
    x, kwargs = _inputs(SIZES[0], seed=0, mask=True, pooled=True)
    want = _grads(block, block, x, kwargs)
    got = _grads(compiled, block, x, kwargs)
    _compare_grads(got, want, SIZES[0])
    torch._dynamo.reset()


def test_compile_default_with_context_and_mask():
    # Default torch.compile: static at the first size, one dynamic recompile at the second
    # (automatic dynamic shapes), none after.
    block = _block("gaussian", True).eval()
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    for i, size in enumerate(SIZES):
        x, kwargs = _inputs(size, seed=i, context=True, mask=True, pooled=True)
        with torch._dynamo.config.patch(error_on_recompile=i > 1), torch.no_grad():
            torch.testing.assert_close(compiled(x, **kwargs), block(x, **kwargs), **TOL)
    torch._dynamo.reset()


# torch.export -------------------------------------------------------------------------------


@pytest.mark.parametrize(("instantiation", "pooled"), CASES, ids=CASE_IDS)
def test_export_with_dynamic_dims_matches_eager_at_every_size(instantiation, pooled):
    block = _block(instantiation, pooled).eval()
    x, _ = _inputs(SIZES[0], seed=0)
    program = torch.export.export(block, (x,), dynamic_shapes=_dims(pooled))
    exported = program.module()
    for i, size in enumerate(SIZES):
        x, _ = _inputs(size, seed=10 + i)
        torch.testing.assert_close(exported(x), block(x), **TOL, msg=lambda m, s=size: f"{s}: {m}")


VARIANTS = [
    ("concatenation", False, "mask"),
    ("dot_product", True, "mask"),
    ("embedded_gaussian", True, "mask"),
    ("gaussian", False, "context"),
    ("dot_product", True, "context"),
    ("concatenation", True, "context+mask"),
    ("embedded_gaussian", False, "context+mask"),
]


@pytest.mark.parametrize(
    ("instantiation", "pooled", "variant"), VARIANTS, ids=["-".join(map(str, v)) for v in VARIANTS]
)
def test_export_masked_and_with_context_matches_eager(instantiation, pooled, variant):
    block = _block(instantiation, pooled).eval()
    context, mask = "context" in variant, "mask" in variant
    x, kwargs = _inputs(SIZES[0], seed=0, context=context, mask=mask, pooled=pooled)
    dims = _dims(pooled, context=context, mask=mask)
    program = torch.export.export(block, (x,), kwargs, dynamic_shapes=dims)
    exported = program.module()
    for i, size in enumerate(SIZES):
        x, kwargs = _inputs(size, seed=20 + i, context=context, mask=mask, pooled=pooled)
        torch.testing.assert_close(exported(x, **kwargs), block(x, **kwargs), **TOL)


@pytest.mark.parametrize(
    ("instantiation", "spatial_dims", "data_format"),
    [("dot_product", 1, "channels_first"), ("gaussian", 3, "channels_last")],
)
def test_other_ranks_and_layouts_export_and_compile(instantiation, spatial_dims, data_format):
    # subsample=True pools L by 2 (1-D) and H, W by 2 (3-D, T unpooled). Extents of 1
    # would recompile: dynamo specialises 0 and 1 whatever the code.
    block = _block(instantiation, True, spatial_dims=spatial_dims, data_format=data_format)
    block.eval()
    keys = [Dim(f"keys{i}", min=2, max=64) for i in range(2)]
    if spatial_dims == 1:
        shapes = [(3, C, 10), (2, C, 22), (4, C, 16)]
        dims = {0: Dim("batch"), 2: 2 * keys[0]}
    else:
        shapes = [(3, 5, 12, 10, C), (2, 3, 8, 8, C), (2, 2, 16, 14, C)]
        dims = {0: Dim("batch"), 1: Dim("t", max=64), 2: 2 * keys[0], 3: 2 * keys[1]}
    xs = [torch.randn(shape, dtype=torch.float64) for shape in shapes]
    exported = torch.export.export(block, (xs[0],), dynamic_shapes={"x": dims}).module()
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="aot_eager", dynamic=True, fullgraph=True)
    for i, x in enumerate(xs):
        want = block(x)
        torch.testing.assert_close(exported(x), want, **TOL)
        with torch._dynamo.config.patch(error_on_recompile=i > 0):
            torch.testing.assert_close(compiled(x), want, **TOL)
    torch._dynamo.reset()


def test_exported_strategy_does_not_depend_on_the_traced_size():
    # At the traced size the cost model picks the pairwise concatenation; the program must
    # hold the sorted one, which is exact and linear in memory at every size.
    block = _block("concatenation", False).eval()
    x, _ = _inputs(SIZES[0], seed=0)
    n = SIZES[0][1] * SIZES[0][2]
    assert choose_strategy("concatenation", n, n, C // 2, C // 2) == "pairwise"
    assert TRACED_STRATEGIES["concatenation"] == "sorted"
    program = torch.export.export(block, (x,), dynamic_shapes=_dims(False))
    targets = {str(node.target) for node in program.graph.nodes}
    assert "aten.searchsorted.Tensor" in targets, targets


def test_export_needs_pooled_extents_of_two_and_eager_names_a_small_input():
    block = _block("embedded_gaussian", True).eval()
    x, _ = _inputs(SIZES[0], seed=0)
    dims = {"x": {0: Dim("batch"), 2: Dim("h", min=2), 3: Dim("w", min=4)}}
    with pytest.raises(Exception, match=r"Constraints violated \(h\)"):
        torch.export.export(block, (x,), dynamic_shapes=dims)
    exported = torch.export.export(block, (x,), dynamic_shapes=_dims(True)).module()
    small = torch.randn(2, C, 2, 8, dtype=torch.float64)
    with pytest.raises(AssertionError, match=r"x.size\(\)\[2\] >= 4"):
        exported(small)  # the program's own input check: H = 2 * h_keys, h_keys >= 2
    tiny = torch.randn(2, C, 1, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="smaller than its subsample window 2"):
        block(tiny)


# torch.fx -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("instantiation", "pooled"), CASES, ids=CASE_IDS)
def test_fx_symbolic_trace_computes_the_same_function(instantiation, pooled):
    block = _block(instantiation, pooled).eval()
    graph = torch.fx.symbolic_trace(block)
    for i, size in enumerate(SIZES):
        x, _ = _inputs(size, seed=30 + i)
        # The same kernels run eagerly, in the same order: equal to the last bit.
        torch.testing.assert_close(graph(x), block(x), rtol=0, atol=0)
    calls = [n.target for n in graph.graph.nodes if n.op in ("call_function", "call_module")]
    assert calls.count(attend_parts) == 1  # one node: its strategy choice sees real sizes
    assert {"out", "norm"} <= set(calls)  # modules stay modules (feature extraction)


def test_fx_graph_survives_deepcopy_and_torch_save():
    block = _block("concatenation", True).eval()
    graph = torch.fx.symbolic_trace(block)
    buffer = io.BytesIO()
    torch.save(graph, buffer)
    buffer.seek(0)
    x, _ = _inputs(SIZES[2], seed=0)
    for restored in (copy.deepcopy(graph), torch.load(buffer, weights_only=False)):
        torch.testing.assert_close(restored(x), block(x), rtol=0, atol=0)


def test_fx_graph_refuses_arguments_it_was_traced_without():
    block = _block("embedded_gaussian", True).eval()
    graph = torch.fx.symbolic_trace(block)
    x, kwargs = _inputs(SIZES[0], seed=0, context=True, mask=True, pooled=True)
    for name, value in [*kwargs.items(), ("return_attention", True)]:
        with pytest.raises(ValueError, match=rf"{name}=.*traced with {name}="):
            graph(x, **{name: value})
    graph(x, key_mask=None, return_attention=False)  # the defaults themselves are fine


def test_fx_traces_context_mask_and_attention_when_given():
    block = _block("concatenation", True).eval()

    class Caller(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = block

        def forward(self, x, context, key_mask):
            return self.block(x, context, key_mask)

    graph = torch.fx.symbolic_trace(Caller())
    for i, size in enumerate(SIZES):
        x, kwargs = _inputs(size, seed=40 + i, context=True, mask=True, pooled=True)
        want = block(x, **kwargs)
        torch.testing.assert_close(graph(x, kwargs["context"], kwargs["key_mask"]), want, **TOL)
    with_attention = torch.fx.symbolic_trace(block, concrete_args={"return_attention": True})
    x, _ = _inputs(SIZES[1], seed=0)
    # FX renames the specialised placeholder and asserts its value: pass it positionally.
    outputs = with_attention(x, None, None, True)
    for got, want in zip(outputs, block(x, return_attention=True)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_fx_inside_a_network_and_a_traced_flag_is_refused():
    block = _block("dot_product", False).eval()
    network = torch.nn.Sequential(torch.nn.Conv2d(C, C, 1, dtype=torch.float64), block)
    graph = torch.fx.symbolic_trace(network)
    x, _ = _inputs(SIZES[0], seed=0)
    torch.testing.assert_close(graph(x), network(x), rtol=0, atol=0)

    class Flag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = block

        def forward(self, x, flag):
            return self.block(x, return_attention=flag)

    with pytest.raises(TypeError, match=r"return_attention=.*Python bool"):
        torch.fx.symbolic_trace(Flag())


# torch.func.vmap ----------------------------------------------------------------------------


@pytest.mark.parametrize(("instantiation", "pooled"), CASES, ids=CASE_IDS)
def test_vmap_over_a_stack_of_inputs_matches_a_loop(instantiation, pooled):
    block = _block(instantiation, pooled).eval()
    for i, size in enumerate(SIZES):
        xs = torch.stack([_inputs(size, seed=50 + i + k)[0] for k in range(2)])
        want = torch.stack([block(x) for x in xs])
        torch.testing.assert_close(torch.func.vmap(block)(xs), want, **TOL)


def test_vmap_with_masks_and_forced_strategies():
    for instantiation, strategy in [
        ("embedded_gaussian", "chunked"),
        ("gaussian", "sdpa"),
        ("concatenation", "sorted"),
        ("dot_product", "pairwise"),
    ]:
        block = _block(instantiation, True, strategy=strategy).eval()
        pairs = [_inputs(SIZES[0], seed=k, mask=True, pooled=True) for k in range(2)]
        xs = torch.stack([x for x, _ in pairs])
        masks = torch.stack([kw["key_mask"] for _, kw in pairs])
        got = torch.func.vmap(lambda x, m, b=block: b(x, key_mask=m))(xs, masks)
        want = torch.stack([block(x, key_mask=m) for x, m in zip(xs, masks)])
        torch.testing.assert_close(got, want, **TOL, msg=lambda m, s=strategy: f"{s}: {m}")


def test_vmap_in_training_names_batch_norm():
    # BN's running statistics are one per block, not one per vmapped input: PyTorch refuses
    # and says so (eval mode, or norm=None, vmaps).
    block = _block("dot_product", False).train()
    xs = torch.stack([_inputs(SIZES[0], seed=k)[0] for k in range(2)])
    with pytest.raises(RuntimeError, match="Batch norm got a batched tensor"):
        torch.func.vmap(block)(xs)
    plain = _block("dot_product", False, norm=None).train()
    want = torch.stack([plain(x) for x in xs])
    torch.testing.assert_close(torch.func.vmap(plain)(xs), want, **TOL)


# The tracing predicate ----------------------------------------------------------------------


def test_is_tracing_sees_compilers_exporters_and_tracers():
    from torch.fx.experimental.proxy_tensor import make_fx

    class Probe(torch.nn.Module):
        def forward(self, t):
            return t * 0 + float(is_tracing(t))  # the answer at trace time, as a constant

    x = torch.ones(2, 3)
    probe = Probe()
    assert float(probe(x).max()) == 0.0
    traced = {
        "compile": torch.compile(probe, backend="eager", fullgraph=True),
        "export": torch.export.export(probe, (x,)).module(),
        "export, strict": torch.export.export(probe, (x,), strict=True).module(),
        "jit.trace": torch.jit.trace(probe, (x,), check_trace=False),
        "fx": torch.fx.symbolic_trace(probe),
        "make_fx": make_fx(probe, tracing_mode="symbolic")(x),
    }
    answers = {name: float(run(x).min()) for name, run in traced.items()}
    assert answers == dict.fromkeys(traced, 1.0), answers
