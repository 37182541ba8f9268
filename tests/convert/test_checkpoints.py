"""Whole checkpoints: `find_blocks` finds every block of a network, and broken ones are refused.

Each network below is a state dict laid out as the project that trains it saves it - the
block prefixes, the neighbouring non-block keys, the extra entries (Caffe2's optimiser
``_momentum`` blobs, ``model_iter`` and ``lr``) - with random block weights from
``tests/convert/implementations.py``. A found block is right when its prefix and keys are
exactly that block's, its config is the profile of the options it was built with, its
weights make ``nonlocal_forward`` compute the independent forward pass of that block, and
writing them back gives the checkpoint's entries bit for bit.

Malformed single blocks (a missing, extra, mis-shaped, wrongly typed or foreign key, or two
blocks at once) must raise a ValueError naming the offending key.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nonlocal_core import profile  # noqa: E402
from nonlocal_core.convert import find_blocks, from_state_dict, to_state_dict  # noqa: E402
from tests.convert import implementations as impl  # noqa: E402

EXTENTS = {2: (5, 7), 3: (3, 5, 7)}


@dataclasses.dataclass(frozen=True)
class Block:
    """One block of a network: where it sits (prefix with its trailing separator), the
    options of its source's constructor, and its spatial rank."""

    prefix: str
    options: dict[str, Any]
    dims: int
    seed: int = 0

    @property
    def channels(self) -> int:
        opts = self.options
        return opts.get("in_channels", opts.get("dim", opts.get("dim_in")))


@dataclasses.dataclass(frozen=True)
class Network:
    """A whole checkpoint: its source, blocks, other entries, and `find_blocks` arguments."""

    name: str
    source: str
    blocks: tuple[Block, ...]
    others: dict[str, Any]  # non-block entries, inserted before the blocks in this order
    arguments: dict[str, Any]  # what find_blocks is told (the options weights cannot show)

    def state(self) -> dict[str, Any]:
        """The checkpoint: other entries first (stem, residual units), then each block."""
        state = dict(self.others)
        for block in self.blocks:
            state.update(_block_state(self.source, block))
        if self.source == "caffe2":
            # Caffe2 saves an SGD momentum blob next to every trainable parameter (under the
            # block's prefix too: the reader must skip them), plus the iteration and rate.
            params = [k for k, v in state.items() if not k.endswith(("_rm", "_riv"))]
            state |= {f"{k}_momentum": np.zeros_like(state[k]) for k in params}
            state |= {"model_iter": 300300, "lr": np.array(0.0001, dtype=np.float32)}
        return state


def _impl_prefix(source: str, prefix: str) -> str:
    """implementations.py joins Caffe2 blob names as prefix + "_theta_w"."""
    return prefix[:-1] if source == "caffe2" else prefix


def _block_state(source: str, block: Block) -> dict[str, np.ndarray]:
    prefix = _impl_prefix(source, block.prefix)
    return impl.random_state(source, block.options, seed=block.seed, prefix=prefix)


def _conv(out_c: int, in_c: int, *kernel: int) -> np.ndarray:
    return np.random.default_rng(out_c * 31 + in_c).normal(size=(out_c, in_c, *kernel))


def _torch_bn(name: str, c: int) -> dict[str, np.ndarray]:
    """A BatchNorm's entries, as a torch module saves them."""
    return {
        f"{name}.weight": np.ones(c),
        f"{name}.bias": np.zeros(c),
        f"{name}.running_mean": np.zeros(c),
        f"{name}.running_var": np.ones(c),
        f"{name}.num_batches_tracked": np.array(100, dtype=np.int64),
    }


def _caffe2_bn(name: str, c: int) -> dict[str, np.ndarray]:
    return {f"{name}_bn_{p}": np.ones(c, dtype=np.float32) for p in ("s", "b", "rm", "riv")}


# SlowFast (slowfast/models/video_model_builder.py): stages s1..s5, pathway-indexed blocks;
# the Kinetics NL configs put blocks at res3 {1, 3} and res4 {1, 3, 5} -> s3, s4.
SLOWFAST_OPTS = dict(pool_size=[1, 2, 2], instantiation="softmax")
SLOWFAST = Network(
    "slowfast-i3d-nl",
    "slowfast",
    (
        Block("s3.pathway0_nonlocal1.", dict(dim=8, dim_inner=4, **SLOWFAST_OPTS), 3, 1),
        Block("s3.pathway0_nonlocal3.", dict(dim=8, dim_inner=4, **SLOWFAST_OPTS), 3, 2),
        Block("s4.pathway0_nonlocal1.", dict(dim=16, dim_inner=8, **SLOWFAST_OPTS), 3, 3),
    ),
    {
        "s1.pathway0_stem.conv.weight": _conv(4, 3, 5, 7, 7),
        **_torch_bn("s1.pathway0_stem.bn", 4),
        "s2.pathway0_res0.branch2.a.weight": _conv(4, 4, 3, 1, 1),
        **_torch_bn("s2.pathway0_res0.branch2.a_bn", 4),
        "s3.pathway0_res1.branch2.c.weight": _conv(8, 4, 1, 1, 1),
        "head.projection.weight": np.zeros((400, 16)),
        "head.projection.bias": np.zeros(400),
    },
    SLOWFAST_OPTS,
)

# mmaction2 I3D + NL (ResNet3d with non_local=(0, 1, 0, 1), non_local_cfg below): each
# Bottleneck3d with a block holds it as `non_local_block`, a mmcv NonLocal3d.
MMACTION2_CFG = dict(
    sub_sample=True,
    use_scale=False,
    norm_cfg=dict(type="BN3d", requires_grad=True),
    mode="embedded_gaussian",
)
MMACTION2 = Network(
    "mmaction2-i3d-nl",
    "mmcv",
    (
        Block(
            "backbone.layer2.1.non_local_block.",
            dict(in_channels=8, spatial_dims=3, **MMACTION2_CFG),
            3,
            4,
        ),
        Block(
            "backbone.layer2.3.non_local_block.",
            dict(in_channels=8, spatial_dims=3, **MMACTION2_CFG),
            3,
            5,
        ),
        Block(
            "backbone.layer3.1.non_local_block.",
            dict(in_channels=16, spatial_dims=3, **MMACTION2_CFG),
            3,
            6,
        ),
    ),
    {
        "backbone.conv1.conv.weight": _conv(4, 3, 5, 7, 7),
        **_torch_bn("backbone.conv1.bn", 4),
        "backbone.layer2.1.conv1.conv.weight": _conv(4, 8, 3, 1, 1),
        **_torch_bn("backbone.layer2.1.conv1.bn", 4),
        "cls_head.fc_cls.weight": np.zeros((400, 16)),
        "cls_head.fc_cls.bias": np.zeros(400),
    },
    MMACTION2_CFG,  # the rank is read from the kernels
)

# mmseg NLHead: one NonLocal2d `nl_block` (dot product, SyncBN) inside the decode head; the
# weights tell the norm but not its type or eps, nor the mode: those are the arguments.
MMSEG_CFG = dict(reduction=2, use_scale=True, mode="dot_product", norm_cfg=dict(type="SyncBN"))
MMSEG = Network(
    "mmseg-nlhead",
    "mmcv",
    (Block("decode_head.nl_block.", dict(in_channels=8, spatial_dims=2, **MMSEG_CFG), 2, 7),),
    {
        "backbone.stem.0.weight": _conv(4, 3, 3, 3),
        "decode_head.convs.0.conv.weight": _conv(8, 16, 3, 3),
        **_torch_bn("decode_head.convs.0.bn", 8),
        "decode_head.conv_seg.weight": _conv(19, 8, 1, 1),
        "decode_head.conv_seg.bias": np.zeros(19),
    },
    MMSEG_CFG,
)

# The authors' Caffe2 R50 I3D NL: blobs `nonlocal_conv{3,4}_{i}_*` after res3_1, res3_3,
# res4_3 (index % 2 == 1), next to the ResNet's own blobs; a pickle's {'blobs': ...}.
CAFFE2_OPTS: dict[str, Any] = {}
CAFFE2 = Network(
    "caffe2-r50-i3d-nl",
    "caffe2",
    (
        Block("nonlocal_conv3_1_", dict(dim_in=8, dim_inner=4), 3, 8),
        Block("nonlocal_conv3_3_", dict(dim_in=8, dim_inner=4), 3, 9),
        Block("nonlocal_conv4_3_", dict(dim_in=16, dim_inner=8), 3, 10),
    ),
    {
        "conv1_w": _conv(4, 3, 5, 7, 7).astype(np.float32),
        **_caffe2_bn("res_conv1", 4),
        "res3_1_branch2a_w": _conv(4, 8, 3, 1, 1).astype(np.float32),
        **_caffe2_bn("res3_1_branch2a", 4),
        "res4_3_branch2c_w": _conv(16, 4, 1, 1, 1).astype(np.float32),
        "pred_w": np.zeros((400, 16), dtype=np.float32),
        "pred_b": np.zeros(400, dtype=np.float32),
    },
    CAFFE2_OPTS,
)

# AlexHex7's lib/network.py (MNIST demo): conv_1, nl_1, conv_2, nl_2, conv_3, fc; the file
# decides the instantiation, so dot product must be told, concatenation shows in its keys.
ALEX_DOT = dict(instantiation="dot_product", sub_sample=True, bn_layer=True, spatial_dims=2)
ALEXHEX7 = Network(
    "alexhex7-mnist-dot",
    "alexhex7",
    (
        Block("nl_1.", dict(in_channels=4, **ALEX_DOT), 2, 11),
        Block("nl_2.", dict(in_channels=8, **ALEX_DOT), 2, 12),
    ),
    {
        "conv_1.0.weight": _conv(4, 1, 3, 3),
        **_torch_bn("conv_1.1", 4),
        "conv_2.0.weight": _conv(8, 4, 3, 3),
        "fc.0.weight": np.zeros((16, 72)),
    },
    dict(instantiation="dot_product"),
)
ALEX_CAT = dict(instantiation="concatenation", sub_sample=False, bn_layer=False, spatial_dims=2)
ALEXHEX7_CONCAT = Network(
    "alexhex7-mnist-concatenation",
    "alexhex7",
    (Block("nl_1.", dict(in_channels=4, **ALEX_CAT), 2, 13),),
    {"conv_1.0.weight": _conv(4, 1, 3, 3), "fc.0.weight": np.zeros((16, 72))},
    {},
)

# timm ResNet with attn_layer="nl": each Bottleneck's attention module is `se`.
TIMM = Network(
    "timm-resnet-nl",
    "timm",
    (
        Block("layer3.0.se.", dict(in_channels=8), 2, 14),
        Block("layer4.1.se.", dict(in_channels=16, rd_channels=8), 2, 15),
    ),
    {
        "conv1.weight": _conv(4, 3, 7, 7),
        **_torch_bn("bn1", 4),
        "layer3.0.conv1.weight": _conv(4, 4, 1, 1),
        "layer3.0.downsample.0.weight": _conv(8, 4, 1, 1),
        "fc.weight": np.zeros((10, 16)),
    },
    {},
)

# Canonical weights ("paper") of two 3-D blocks in an encoder, as nonlocal_core saves them.
PAPER_OPTS = dict(spatial_dims=3, instantiation="embedded_gaussian", subsample=True)
PAPER = Network(
    "paper-encoder",
    "paper",
    (
        Block("module.encoder.blocks.1.nonlocal.", dict(in_channels=6, **PAPER_OPTS), 3, 16),
        Block("module.encoder.blocks.3.nonlocal.", dict(in_channels=8, **PAPER_OPTS), 3, 17),
    ),
    {"module.encoder.stem.weight": _conv(6, 3, 3, 3, 3)},
    dict(spatial_dims=3, subsample=True),
)

# PyTorchVideo: create_nonlocal modules inside a ResNet-style stage (its norm is `norm.*`),
# one dot product without a norm among them.
PYTORCHVIDEO_OPTS = dict(pool_size=(1, 2, 2))
PYTORCHVIDEO = Network(
    "pytorchvideo-resnet-nl",
    "pytorchvideo",
    (
        Block("blocks.2.res_blocks.1.nonlocal.", dict(dim_in=8, dim_inner=4, **PYTORCHVIDEO_OPTS),
              3, 18),
        Block("blocks.3.res_blocks.1.nonlocal.", dict(dim_in=16, dim_inner=8, norm=None,
                                                      **PYTORCHVIDEO_OPTS), 3, 19),
    ),
    {
        "blocks.0.conv.weight": _conv(8, 3, 1, 7, 7),
        **_torch_bn("blocks.0.norm", 8),
        "blocks.5.proj.weight": np.zeros((400, 16)),
    },
    PYTORCHVIDEO_OPTS,
)  # fmt: skip

NETWORKS = [
    SLOWFAST, MMACTION2, MMSEG, CAFFE2, ALEXHEX7, ALEXHEX7_CONCAT, TIMM, PAPER, PYTORCHVIDEO
]  # fmt: skip


@pytest.mark.parametrize("network", NETWORKS, ids=lambda n: n.name)
def test_find_blocks_finds_exactly_the_blocks(network):
    state = network.state()
    found = find_blocks(state, network.source, **network.arguments)
    separator = "_" if network.source == "caffe2" else "."
    assert [b.prefix for b in found] == [b.prefix.removesuffix(separator) for b in network.blocks]
    rng = np.random.default_rng(0)
    for block, expected in zip(found, network.blocks):
        what = f"{network.name} {expected.prefix}"
        assert block.source == network.source
        assert block.config == profile(network.source, **expected.options), what
        own = {k: v for k, v in state.items() if k.startswith(expected.prefix)}
        read = sorted(k for k in block.keys if not k.endswith("_momentum"))
        assert read == sorted(k for k in own if not k.endswith("_momentum")), what
        # The weights compute this block's output ...
        x = rng.normal(size=(2, expected.channels, *EXTENTS[expected.dims]))
        z = impl.forward(
            network.source,
            state,
            x,
            expected.options,
            prefix=_impl_prefix(network.source, expected.prefix),
        )
        impl.assert_matches_reference(z, x, block.weights, block.config, f"{what}: z")
        # ... and are exactly the checkpoint's numbers.
        back = to_state_dict(block.weights, network.source, block.config, prefix=expected.prefix)
        impl.assert_same_state(back, _block_state(network.source, expected), what)


@pytest.mark.parametrize("network", [SLOWFAST, CAFFE2, TIMM], ids=lambda n: n.name)
def test_a_network_without_blocks_has_none(network):
    prefixes = tuple(block.prefix for block in network.blocks)
    state = {k: v for k, v in network.state().items() if not k.startswith(prefixes)}
    assert find_blocks(state, network.source, **network.arguments) == []


def test_find_blocks_tells_slowfast_from_pytorchvideo():
    """Both name their convs conv_theta ... conv_out: only the norm's name (``bn`` or
    ``norm``) differs, and a SlowFast checkpoint read as PyTorchVideo must not lose its BN."""
    with pytest.raises(ValueError, match=r"bn\.weight"):
        find_blocks(SLOWFAST.state(), "pytorchvideo", **SLOWFAST.arguments)


def test_find_blocks_names_the_block_and_key_of_a_broken_block():
    state = SLOWFAST.state()
    del state["s3.pathway0_nonlocal3.conv_theta.bias"]
    with pytest.raises(ValueError) as info:
        find_blocks(state, "slowfast", **SLOWFAST.arguments)
    assert "s3.pathway0_nonlocal3" in str(info.value)
    assert "conv_theta.bias" in str(info.value)


# Malformed single blocks -----------------------------------------------------------------------

# One block per source family: its options, a prefix, a kernel to damage, a key to drop,
# and a rename to the name another implementation uses for the same tensor.
MALFORMED = {
    "slowfast": (
        dict(dim=6, dim_inner=3, pool_size=[1, 2, 2]),
        "module.s3.pathway0_nonlocal1.",
        "conv_phi.weight",
        "conv_out.bias",
        ("bn.weight", "norm.weight"),  # PyTorchVideo's name
    ),
    "mmcv": (
        dict(in_channels=6, sub_sample=True, norm_cfg=dict(type="BN2d"), spatial_dims=2),
        "backbone.layer2.1.non_local_block.",
        "phi.0.conv.weight",
        "conv_out.bn.running_var",
        ("theta.conv.weight", "theta.weight"),  # AlexHex7's name
    ),
    "alexhex7": (
        dict(in_channels=6, instantiation="concatenation", spatial_dims=3),
        "nl_1.",
        "concat_project.0.weight",
        "W.1.bias",
        ("concat_project.0.weight", "concat_project.conv.weight"),  # mmcv's name
    ),
    "timm": (
        dict(in_channels=6, rd_channels=4),
        "layer3.0.se.",
        "p.weight",
        "norm.running_mean",
        ("norm.weight", "bn.weight"),  # SlowFast's name
    ),
    "caffe2": (
        dict(dim_in=6, dim_inner=3),
        "nonlocal_conv3_1_",
        "phi_w",
        "bn_riv",
        ("bn_rm", "bn_running_mean"),  # what a PyTorch port of the blobs calls it
    ),
}


def _malformed(source: str):
    """The block's config, its state (keys under the prefix), and its named keys."""
    options, prefix, kernel, dropped, foreign = MALFORMED[source]
    state = impl.random_state(source, options, prefix=_impl_prefix(source, prefix), seed=20)
    return profile(source, **options), state, prefix, kernel, dropped, foreign


def _expect_error(state, source, config, *names: str) -> None:
    """from_state_dict refuses `state` with a ValueError naming every one of `names`."""
    with pytest.raises(ValueError) as info:
        from_state_dict(state, source, config)
    for name in names:
        assert name in str(info.value), f"{name!r} not named in: {info.value}"


@pytest.mark.parametrize("source", MALFORMED)
def test_missing_key(source):
    config, state, prefix, _, dropped, _ = _malformed(source)
    del state[prefix + dropped]
    _expect_error(state, source, config, prefix + dropped)


@pytest.mark.parametrize("source", MALFORMED)
def test_extra_key_under_the_block_prefix(source):
    config, state, prefix, _, _, _ = _malformed(source)
    extra = prefix + ("gamma_w" if source == "caffe2" else "gamma.weight")
    state[extra] = np.ones(3)
    _expect_error(state, source, config, extra)


@pytest.mark.parametrize("source", MALFORMED)
def test_mis_shaped_key(source):
    config, state, prefix, kernel, _, _ = _malformed(source)
    shape = state[prefix + kernel].shape
    state[prefix + kernel] = np.zeros((shape[0], shape[1] + 1, *shape[2:]))  # one more input
    _expect_error(state, source, config, prefix + kernel)


@pytest.mark.parametrize("dtype", [np.complex128, np.bool_])
@pytest.mark.parametrize("source", MALFORMED)
def test_key_of_a_non_real_dtype(source, dtype):
    config, state, prefix, kernel, _, _ = _malformed(source)
    state[prefix + kernel] = state[prefix + kernel].astype(dtype)
    _expect_error(state, source, config, prefix + kernel)


@pytest.mark.parametrize("source", MALFORMED)
def test_key_named_as_another_source_names_it(source):
    config, state, prefix, _, _, (own, other) = _malformed(source)
    state[prefix + other] = state.pop(prefix + own)
    _expect_error(state, source, config, prefix + other)


@pytest.mark.parametrize("source", MALFORMED)
def test_two_blocks_are_ambiguous(source):
    config, state, prefix, *_ = _malformed(source)
    other = "nonlocal_conv4_3_" if source == "caffe2" else "head.nl."
    options = MALFORMED[source][0]
    state |= impl.random_state(source, options, prefix=_impl_prefix(source, other), seed=21)
    _expect_error(state, source, config, prefix, other)
