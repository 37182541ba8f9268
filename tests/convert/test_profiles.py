"""`nonlocal_core.profile`: each published implementation's arguments -> the config it
computes, stated here field by field from what each project's source does (anchors notes,
spec Appendix A), independently of `nonlocal_core.profiles`; `source_kwargs` inverts it."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonlocal_core import INSTANTIATIONS, SOURCES, NonLocalConfig, ProfileError, profile
from nonlocal_core.profiles import make_divisible, source_kwargs
from tests.hostile import fuzz_settings

# (source, arguments, the config fields that implementation computes with).
FACTS = [
    # Caffe2: pool x (1, 2, 2) then the phi/g convs, scale 1/sqrt(C'), eps 1.0000001e-5.
    (
        "caffe2",
        {"dim_in": 1024, "dim_inner": 512},
        dict(in_channels=1024, spatial_dims=3, inter_channels=512, subsample=(1, 2, 2),
             pool_position="before_projection", norm="batch", norm_eps=1.0000001e-5),
    ),
    (
        "caffe2",
        {"dim_in": 64, "dim_inner": 32, "USE_SOFTMAX": False, "USE_BN": False,
         "max_pool_stride": 3},
        dict(in_channels=64, spatial_dims=3, instantiation="dot_product", inter_channels=32,
             subsample=(1, 3, 3), pool_position="before_projection", norm=None,
             norm_eps=1.0000001e-5),
    ),
    (
        "caffe2",
        {"dim_in": 64, "dim_inner": 32, "USE_SCALE": 0, "USE_MAXPOOL": False},
        dict(in_channels=64, spatial_dims=3, inter_channels=32, logit_scale=False,
             pool_position="before_projection", norm_eps=1.0000001e-5),
    ),
    # AlexHex7: no scale anywhere, pooling after the convs, C' = max(C // 2, 1).
    (
        "alexhex7",
        {"in_channels": 3, "instantiation": "embedded_gaussian", "spatial_dims": 3},
        dict(in_channels=3, spatial_dims=3, inter_channels=1, logit_scale=False,
             subsample=(1, 2, 2)),
    ),
    (
        "alexhex7",
        {"in_channels": 8, "instantiation": "concatenation", "spatial_dims": 1,
         "sub_sample": False, "bn_layer": False, "inter_channels": 3},
        dict(in_channels=8, spatial_dims=1, instantiation="concatenation", inter_channels=3,
             norm=None),
    ),
    (
        "alexhex7",
        {"in_channels": 8, "instantiation": "gaussian", "spatial_dims": 2},
        dict(in_channels=8, spatial_dims=2, instantiation="gaussian", logit_scale=False,
             subsample=(2, 2)),
    ),
    # mmcv: no norm by default, C' = max(C // reduction, 1), only the embedded Gaussian scales.
    (
        "mmcv",
        {"in_channels": 256, "reduction": 2, "use_scale": True, "sub_sample": False,
         "mode": "embedded_gaussian", "norm_cfg": None, "spatial_dims": 2},
        dict(in_channels=256, spatial_dims=2, inter_channels=128, norm=None),
    ),
    (
        "mmcv",
        {"in_channels": 10, "reduction": 4, "mode": "gaussian", "spatial_dims": 3,
         "sub_sample": True, "norm_cfg": {"type": "BN3d", "requires_grad": True, "eps": 1e-3}},
        dict(in_channels=10, spatial_dims=3, instantiation="gaussian", inter_channels=2,
             logit_scale=False, subsample=(1, 2, 2), norm="batch", norm_eps=1e-3),
    ),
    (
        "mmcv",
        {"in_channels": 6, "use_scale": False, "spatial_dims": 1, "reduction": 8},
        dict(in_channels=6, spatial_dims=1, inter_channels=1, logit_scale=False, norm=None),
    ),
    # SlowFast and PyTorchVideo: theta from x, phi/g from pool(x), scale 1/sqrt(dim_inner).
    (
        "slowfast",
        {"dim": 1024, "dim_inner": 512, "pool_size": [1, 2, 2], "instantiation": "softmax"},
        dict(in_channels=1024, spatial_dims=3, inter_channels=512, subsample=(1, 2, 2),
             pool_position="before_projection"),
    ),
    (
        "slowfast",
        {"dim": 16, "dim_inner": 4, "pool_size": [1, 1, 1], "instantiation": "dot_product",
         "norm_type": "none"},
        dict(in_channels=16, spatial_dims=3, instantiation="dot_product", inter_channels=4,
             pool_position="before_projection", norm=None),
    ),
    (
        "pytorchvideo",
        {"dim_in": 16, "dim_inner": 8},
        dict(in_channels=16, spatial_dims=3, inter_channels=8, pool_position="before_projection"),
    ),
    (
        "pytorchvideo",
        {"dim_in": 16, "dim_inner": 8, "pool_size": None, "norm": None, "norm_eps": 1e-3},
        dict(in_channels=16, spatial_dims=3, inter_channels=8, pool_position="before_projection",
             norm=None, norm_eps=1e-3),
    ),
    # timm: C' = make_divisible(C / 8, 8), scale C^-1/2 (the input width).
    (
        "timm",
        {"in_channels": 64},
        dict(in_channels=64, spatial_dims=2, inter_channels=8, logit_scale=64**-0.5),
    ),
    (
        "timm",
        {"in_channels": 100, "use_scale": False},
        dict(in_channels=100, spatial_dims=2, inter_channels=16, logit_scale=False),
    ),
    # The paper: its formulas have no scale; subsampling pools after phi and g.
    (
        "paper",
        {"in_channels": 32, "spatial_dims": 3, "subsample": True},
        dict(in_channels=32, spatial_dims=3, logit_scale=False, subsample=(1, 2, 2)),
    ),
    (
        "paper",
        {"in_channels": 32, "instantiation": "dot_product"},
        dict(in_channels=32, instantiation="dot_product"),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("source", "arguments", "fields"), FACTS)
def test_profile_states_each_implementations_semantics(source, arguments, fields):
    assert profile(source, **arguments) == NonLocalConfig(**fields)


def test_timm_rounds_the_inner_width_as_timm_does():
    # make_divisible(v, 8): nearest multiple of 8, at least 8, one step up below 90%.
    assert [make_divisible(v) for v in (1.0, 8.0, 8.5, 11.9, 12.0, 17.0, 100.0, 250.0)] == [
        8, 8, 8, 16, 16, 16, 104, 248,
    ]  # fmt: skip
    assert profile("timm", in_channels=2048).inter_channels == 256
    assert profile("timm", in_channels=64, rd_channels=24).inter_channels == 24
    assert profile("timm", in_channels=64, rd_ratio=0.25, rd_divisor=16).inter_channels == 16


def test_scale_is_the_implementations_value():
    # The scale each project multiplies its logits by; the spec default is 1/sqrt(d).
    assert math.isclose(profile("timm", in_channels=64).scale, 64**-0.5, rel_tol=1e-15)
    assert math.isclose(profile("slowfast", dim=64, dim_inner=16).scale, 16**-0.5, rel_tol=1e-15)
    assert profile("mmcv", in_channels=8, mode="gaussian", spatial_dims=2).scale == 1.0


@pytest.mark.parametrize(
    ("source", "arguments", "message"),
    [
        ("slowfast", {"dim": 8, "dim_inner": 4, "norm_type": "layernorm"}, "norm_type='layernorm'"),
        ("slowfast", {"dim": 8, "dim_inner": 4, "instantiation": "gaussian"}, "instantiation"),
        ("slowfast", {"dim": 8, "dim_inner": 4, "pool_size": [2, 2]}, "pool_size=[2, 2]"),
        ("slowfast", {"dim": 8, "dim_inner": 0}, "dim_inner=0"),
        ("mmcv", {"in_channels": 8, "spatial_dims": 2, "norm_cfg": {"type": "GN"}}, "norm_cfg"),
        ("mmcv", {"in_channels": 8, "spatial_dims": 2, "norm_cfg": {"type": "BN", "x": 1}},
         "['x']"),
        ("mmcv", {"in_channels": 8, "spatial_dims": 2, "conv_cfg": {"type": "Conv3d"}},
         "conv_cfg"),
        ("mmcv", {"in_channels": 8, "spatial_dims": 3, "conv_cfg": None}, "conv_cfg=None"),
        ("mmcv", {"in_channels": 8, "spatial_dims": 4}, "spatial_dims=4"),
        # nn.BatchNorm2d ("BN") refuses the 5-D input of NonLocal3d: no function to reproduce.
        ("mmcv", {"in_channels": 8, "spatial_dims": 3, "norm_cfg": {"type": "BN"}},
         "builds a 2-D BatchNorm, the block is 3-D"),
        ("mmcv", {"in_channels": 8, "spatial_dims": 1, "norm_cfg": {"type": "BN3d"}},
         "builds a 3-D BatchNorm"),
        ("mmcv", {"in_channels": 8, "spatial_dims": 2, "mode": "softmax"}, "mode='softmax'"),
        ("caffe2", {"dim_in": 8, "dim_inner": 4, "USE_AFFINE": True}, "USE_AFFINE"),
        ("caffe2", {"dim_in": 8, "dim_inner": 4, "NO_BIAS": 1}, "NO_BIAS"),
        ("caffe2", {"dim_in": 8, "dim_inner": 4, "dim_out": 16}, "dim_out=16"),
        ("caffe2", {"dim_in": 8, "dim_inner": 4, "BN_EPSILON": 0}, "BN_EPSILON=0"),
        ("pytorchvideo", {"dim_in": 8, "dim_inner": 4, "norm": "GroupNorm"}, "norm='GroupNorm'"),
        ("pytorchvideo", {"dim_in": 8, "dim_inner": 4, "norm": "BatchNorm2d"}, "BatchNorm2d"),
        ("alexhex7", {"in_channels": 8, "instantiation": "dot", "spatial_dims": 2},
         "instantiation='dot'"),
        ("alexhex7", {"in_channels": 8, "instantiation": "gaussian", "spatial_dims": 2,
                      "sub_sample": "yes"}, "sub_sample='yes'"),
        ("timm", {"in_channels": 8, "rd_ratio": -1.0}, "rd_ratio=-1.0"),
        ("paper", {"in_channels": 8, "spatial_dims": 5}, "spatial_dims=5"),
    ],
)  # fmt: skip
def test_bad_or_inexpressible_arguments_are_errors_naming_them(source, arguments, message):
    with pytest.raises(ProfileError) as info:
        profile(source, **arguments)
    assert message in str(info.value)


def test_unknown_missing_arguments_and_sources_are_named():
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['in_channels'\]"):
        profile("slowfast", in_channels=8, dim=8, dim_inner=4)
    with pytest.raises(TypeError, match=r"needs argument\(s\) \['instantiation'\]"):
        profile("alexhex7", in_channels=8, spatial_dims=2)
    with pytest.raises(ValueError, match="source='torchvision' is invalid"):
        profile("torchvision", in_channels=8)


def test_pytorchvideo_norm_accepts_the_torch_class():
    torch = pytest.importorskip("torch")
    assert profile("pytorchvideo", dim_in=8, dim_inner=4, norm=torch.nn.BatchNorm3d).norm == "batch"
    with pytest.raises(ProfileError, match=r"norm=<class 'torch\.nn\.modules\.normalization"):
        profile("pytorchvideo", dim_in=8, dim_inner=4, norm=torch.nn.GroupNorm)


configs = st.builds(
    NonLocalConfig,
    in_channels=st.integers(1, 12),
    spatial_dims=st.integers(1, 3),
    instantiation=st.sampled_from(INSTANTIATIONS),
    inter_channels=st.none() | st.integers(1, 8),
    subsample=st.sampled_from([False, True, 3]),
    pool_position=st.sampled_from(["after_projection", "before_projection"]),
    norm=st.sampled_from(["batch", None]),
    norm_eps=st.sampled_from([1e-5, 1.0000001e-5, 1e-3]),
)


@fuzz_settings(max_examples=300)
@given(config=configs, source=st.sampled_from(SOURCES), scale=st.sampled_from([None, False, 0.5]))
def test_source_kwargs_inverts_profile_or_says_why_not(config, source, scale):
    if config.is_softmax:
        config = config.replace(logit_scale=scale)
    try:
        arguments = source_kwargs(source, config)
    except ProfileError as exc:
        assert str(exc).startswith(f"{source} cannot express this config: ")
        return
    rebuilt = profile(source, **arguments)
    # Fields without effect may differ: the pool position without subsampling, the norm's
    # epsilon without a norm.
    if config.subsample is None:
        rebuilt = rebuilt.replace(pool_position=config.pool_position)
    if config.norm is None:
        rebuilt = rebuilt.replace(norm_eps=config.norm_eps)
    assert rebuilt == config
