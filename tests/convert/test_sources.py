"""One block per published implementation: its converted weights compute what it computes.

For every source (the paper, Caffe2, AlexHex7, mmcv, SlowFast, PyTorchVideo, timm) and a
representative set of its own constructor options:

(a) ``from_state_dict`` + ``nonlocal_forward`` on the profile's config gives the output of an
    independent float64 forward pass written from that implementation's source
    (``tests/convert/implementations.py``), within the project's float64 tolerance model;
(b) ``to_state_dict(from_state_dict(state))`` gives the state dict back bit for bit: keys,
    shapes, dtypes, values;
(c) the real modules, where installed (mmcv, PyTorchVideo): a randomised module's
    ``state_dict()`` converts to weights whose reference output is the module's, and
    ``load_state_dict(to_state_dict(...), strict=True)`` loads.

Also: weights read from one source and written for every other source that can express the
config (``source_kwargs``) run in that source's independent forward; a BN batch counter is
ignored; arguments without a spec equivalent are refused; mmcv's concatenation cannot be
trained (a known upstream defect, recorded).

Inputs have odd extents so that every max pool drops a remainder (floor), and every BN has
random statistics and affine parameters, so no mistake hides behind an identity init.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nonlocal_core import SOURCES, ProfileError, profile, random_weights  # noqa: E402
from nonlocal_core.convert import from_state_dict, to_state_dict  # noqa: E402
from nonlocal_core.profiles import source_kwargs  # noqa: E402
from tests.convert import implementations as impl  # noqa: E402

# Odd extents: every window of 2 leaves a remainder the pool must drop.
EXTENTS = {1: (9,), 2: (5, 7), 3: (3, 5, 7)}
# A module prefix as a wrapped model writes it (DataParallel + a backbone attribute), which
# from_state_dict must strip; Caffe2 blob names carry the block's name instead.
TORCH_PREFIX = "module.backbone.nl."
CAFFE2_PREFIX = "nonlocal_conv4_3_"


@dataclasses.dataclass(frozen=True)
class Case:
    """One block: a source, its own constructor options, the input extent, and a prefix."""

    source: str
    options: dict[str, Any]
    extent: tuple[int, ...]
    prefix: str = ""

    @property
    def channels(self) -> int:
        opts = self.options
        return opts.get("in_channels", opts.get("dim", opts.get("dim_in")))

    @property
    def id(self) -> str:
        shown = ",".join(f"{k}={_short(v)}" for k, v in self.options.items())
        return f"{self.source}[{shown}]{'+prefix' if self.prefix else ''}"


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return value["type"] + (f"/{value['eps']:g}" if "eps" in value else "")
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, list | tuple):
        return "x".join(map(str, value))
    return str(value)


def _cases() -> list[Case]:
    """A representative grid per source: every instantiation it has, subsampling on and
    off, norm on and off, every rank it supports, and each option that changes the math."""
    cases: list[Case] = []
    instantiations = ["gaussian", "embedded_gaussian", "dot_product", "concatenation"]

    # The paper: spec names; the rank cycles with the instantiation.
    for i, (inst, sub, norm) in enumerate(
        itertools.product(instantiations, [True, False], ["batch", None])
    ):
        if i % 2:  # half the grid: every instantiation, each with subsampling on and off
            continue
        dims = 1 + i % 3
        opts = dict(in_channels=6, spatial_dims=dims, instantiation=inst, subsample=sub)
        cases.append(Case("paper", opts | dict(norm=norm if sub else None), EXTENTS[dims]))
    cases.append(
        Case(
            "paper",
            dict(in_channels=5, spatial_dims=2, instantiation="dot_product", inter_channels=3),
            EXTENTS[2],
            TORCH_PREFIX,
        )
    )

    # AlexHex7: all four files x sub_sample x bn_layer, over 1D/2D/3D.
    for i, (inst, sub, bn) in enumerate(
        itertools.product(instantiations, [True, False], [True, False])
    ):
        dims = 1 + i % 3
        opts = dict(
            in_channels=6, sub_sample=sub, bn_layer=bn, instantiation=inst, spatial_dims=dims
        )
        cases.append(Case("alexhex7", opts, EXTENTS[dims], TORCH_PREFIX if i % 4 == 0 else ""))
    # in_channels // 2 == 0 is bumped to 1; an explicit inter_channels wins.
    cases.append(
        Case("alexhex7", dict(in_channels=1, instantiation="concatenation", spatial_dims=2), (5, 7))
    )
    cases.append(
        Case(
            "alexhex7",
            dict(
                in_channels=5, inter_channels=4, instantiation="embedded_gaussian", spatial_dims=3
            ),
            EXTENTS[3],
        )
    )

    # mmcv: all four modes x sub_sample x norm_cfg over 1D/2D/3D (the real modules run the
    # full product in test_real_mmcv_modules), plus use_scale off and another reduction.
    for i, (mode, sub, norm) in enumerate(
        itertools.product(instantiations, [True, False], [True, False])
    ):
        dims = 1 + i % 3
        norm_cfg = dict(type=f"BN{dims}d", eps=1e-3) if norm else None
        opts = dict(in_channels=6, mode=mode, sub_sample=sub, norm_cfg=norm_cfg, spatial_dims=dims)
        cases.append(Case("mmcv", opts, EXTENTS[dims], TORCH_PREFIX if i % 4 == 1 else ""))
    cases.append(Case("mmcv", dict(in_channels=8, use_scale=False, spatial_dims=2), (5, 7)))
    cases.append(
        Case(
            "mmcv",
            dict(in_channels=8, reduction=4, mode="gaussian", sub_sample=True, spatial_dims=2),
            (5, 7),
        )
    )

    # SlowFast: softmax / dot product x no pool / spatial pool / space-time pool x norm.
    for inst, pool, norm in itertools.product(
        ["softmax", "dot_product"], [None, [1, 2, 2], [2, 2, 2]], ["batchnorm", "none"]
    ):
        if pool == [2, 2, 2] and norm == "none":
            continue
        opts = dict(dim=6, dim_inner=3, pool_size=pool, instantiation=inst, norm_type=norm)
        cases.append(Case("slowfast", opts, (3, 5, 7), TORCH_PREFIX if pool is None else ""))
    cases.append(
        Case("slowfast", dict(dim=4, dim_inner=4, pool_size=[1, 3, 3], norm_eps=1e-3), (2, 7, 8))
    )

    # PyTorchVideo: create_nonlocal's defaults (no pool, BatchNorm3d), pooled, norm=None.
    bn3d = torch.nn.BatchNorm3d
    for inst, pool, norm in [
        ("softmax", (1, 1, 1), bn3d),
        ("softmax", (1, 2, 2), None),
        ("dot_product", (1, 2, 2), bn3d),
        ("dot_product", None, None),
    ]:
        opts = dict(dim_in=6, dim_inner=3, pool_size=pool, instantiation=inst, norm=norm)
        cases.append(Case("pytorchvideo", opts, (3, 5, 7), TORCH_PREFIX if norm else ""))
    cases.append(Case("pytorchvideo", dict(dim_in=4, dim_inner=2, norm_eps=1e-2), (2, 3, 5)))

    # timm: the default width rule (C=8 -> 8), an explicit width, use_scale off, a ratio.
    cases += [
        Case("timm", dict(in_channels=8), (5, 7), TORCH_PREFIX),
        Case("timm", dict(in_channels=6, rd_channels=4), (5, 7)),
        Case("timm", dict(in_channels=6, rd_channels=3, use_scale=False), (5, 7)),
        Case("timm", dict(in_channels=7, rd_ratio=0.5, rd_divisor=2), (3, 5)),
    ]

    # Caffe2: the default block, the dot product, no scale, no pool, no BN, stride 3.
    c2 = dict(dim_in=6, dim_inner=3)
    cases += [
        Case("caffe2", c2, (3, 5, 7), CAFFE2_PREFIX),
        Case("caffe2", c2 | dict(USE_SOFTMAX=False, dim_out=6), (3, 5, 7), CAFFE2_PREFIX),
        Case("caffe2", c2 | dict(USE_SCALE=False, BN_EPSILON=1e-3), (3, 5, 7), CAFFE2_PREFIX),
        Case("caffe2", c2 | dict(USE_MAXPOOL=False, USE_BN=False), (2, 3, 5), CAFFE2_PREFIX),
        Case("caffe2", c2 | dict(max_pool_stride=3, USE_BN=0), (2, 7, 8), CAFFE2_PREFIX),
    ]
    return cases


CASES = _cases()


def _state(case: Case, seed: int = 0, dtype=np.float64) -> dict[str, np.ndarray]:
    """A random state dict of `case`'s block, under its prefix."""
    # implementations.py joins Caffe2 names as prefix + "_theta_w"; here the prefix carries
    # its own trailing "_", as the converter writes it.
    prefix = case.prefix[:-1] if case.source == "caffe2" else case.prefix
    return impl.random_state(case.source, case.options, seed=seed, prefix=prefix, dtype=dtype)


def _input(case: Case, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(2, case.channels, *case.extent))


def _implementation_output(case: Case, state, x) -> np.ndarray:
    prefix = case.prefix[:-1] if case.source == "caffe2" else case.prefix
    return impl.forward(case.source, state, x, case.options, prefix=prefix)


# (a) Converted weights compute the implementation's function ----------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_converted_weights_compute_the_implementations_output(case):
    config = profile(case.source, **case.options)
    state, x = _state(case), _input(case)
    weights = from_state_dict(state, case.source, config)
    # nonlocal_forward(x, weights, config) against the implementation's own output.
    z = _implementation_output(case, state, x)
    impl.assert_matches_reference(z, x, weights, config, f"{case.id}: z")


# (b) The state dict round-trips bit for bit ----------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_state_dict_round_trips_bit_for_bit(case):
    config = profile(case.source, **case.options)
    state = _state(case, seed=2)
    back = to_state_dict(
        from_state_dict(state, case.source, config), case.source, config, prefix=case.prefix
    )
    impl.assert_same_state(back, state, case.id)


# One case per source: the float32 of real checkpoints stays float32 both ways.
FIRST_PER_SOURCE = list({case.source: case for case in reversed(CASES)}.values())


@pytest.mark.parametrize("case", FIRST_PER_SOURCE, ids=lambda c: c.id)
def test_float32_checkpoints_round_trip_as_float32(case):
    config = profile(case.source, **case.options)
    state = _state(case, seed=3, dtype=np.float32)
    weights = from_state_dict(state, case.source, config)
    back = to_state_dict(weights, case.source, config, prefix=case.prefix)
    impl.assert_same_state(back, state, f"{case.id} float32")


@pytest.mark.parametrize(
    "case", [c for c in FIRST_PER_SOURCE if c.source not in ("paper", "caffe2")], ids=lambda c: c.id
)
def test_bn_batch_counter_is_ignored_and_written_as_zero(case):
    """A trained checkpoint's ``num_batches_tracked`` holds no weight: any count, or none at
    all (PyTorch < 0.4.1 saved none), reads as the same weights, and the writer puts an
    int64 0 (the count of a fresh module)."""
    config = profile(case.source, **case.options)
    state = _state(case, seed=4)
    counters = [key for key in state if key.endswith("num_batches_tracked")]
    assert counters, f"{case.id} should have a BatchNorm"
    weights = from_state_dict(state, case.source, config)
    trained = dict(state) | {key: np.array(12345, dtype=np.int64) for key in counters}
    old = {key: value for key, value in state.items() if key not in counters}
    for variant in (trained, old):
        read = from_state_dict(variant, case.source, config)
        assert sorted(read) == sorted(weights)
        for name, value in weights.items():
            assert np.array_equal(read[name], value), name
    back = to_state_dict(weights, case.source, config, prefix=case.prefix)
    for key in counters:
        assert back[key].dtype == np.int64 and back[key].shape == () and back[key] == 0, key


# Weights move between sources --------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_weights_convert_to_every_source_that_can_express_them(case):
    """Read in one source's names, written in another's (Caffe2 blobs into SlowFast, mmcv into
    AlexHex7, anything into the paper's names): the target's own forward pass on the written
    state dict, built with the target arguments `source_kwargs` gives, computes the same
    block - so the writer's names, shapes and values are right for configs it did not read
    (an mmcv target with a norm, for one, must fold a non-zero W_z bias into the BN)."""
    config = profile(case.source, **case.options)
    x = _input(case)
    weights = from_state_dict(_state(case), case.source, config)
    targets = []
    for target in SOURCES:
        try:
            kwargs = source_kwargs(target, config)
        except ProfileError:
            continue  # e.g. a concatenation has no SlowFast equivalent
        targets.append(target)
        prefix = CAFFE2_PREFIX if target == "caffe2" else ""
        state = to_state_dict(weights, target, config, prefix=prefix)
        impl_prefix = prefix[:-1] if target == "caffe2" else prefix
        # The writer's key listing is the target's own, for the target's arguments.
        keys = impl.block_keys(target, kwargs, impl_prefix)
        assert {k: tuple(np.shape(v)) for k, v in state.items()} == keys, target
        z = impl.forward(target, state, x, kwargs, prefix=impl_prefix)
        impl.assert_matches_reference(z, x, weights, config, f"{case.id} as {target}: z")
    assert case.source in targets  # source_kwargs inverts profile


# Options the spec cannot express are refused by name --------------------------------------------


@pytest.mark.parametrize(
    ("source", "options", "name"),
    [
        ("slowfast", dict(dim=4, dim_inner=2, norm_type="layernorm"), "norm_type"),
        ("caffe2", dict(dim_in=4, dim_inner=2, USE_AFFINE=True), "USE_AFFINE"),
        ("caffe2", dict(dim_in=4, dim_inner=2, NO_BIAS=1), "NO_BIAS"),
        ("caffe2", dict(dim_in=4, dim_inner=2, dim_out=8), "dim_out"),
        ("mmcv", dict(in_channels=4, spatial_dims=2, norm_cfg=dict(type="GN")), "norm_cfg"),
        ("pytorchvideo", dict(dim_in=4, dim_inner=2, norm=torch.nn.LayerNorm), "norm"),
    ],
)
def test_options_without_a_spec_equivalent_are_refused(source, options, name):
    """A GroupNorm, an affine layer, bias-free projections or a non-residual width change
    would load into some config and silently compute something else."""
    with pytest.raises(ValueError, match=name):
        profile(source, **options)


# (c) Real modules -----------------------------------------------------------------------------


def _randomised(module):
    """`module` in float64 eval mode with every parameter and BN statistic random."""
    return impl.randomise_module(module.double().eval(), seed=5)


def _check_real_module(module, fresh, source: str, options: dict, x: np.ndarray, what: str):
    """The module's own state_dict (torch tensors, as users pass it) converts to weights whose
    reference output is the module's; those weights load back into `fresh` strictly and
    give the same output bit for bit."""
    # The builders of implementations.py list exactly the real module's entries.
    real = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    assert real == impl.block_keys(source, options), what
    config = profile(source, **options)
    weights = from_state_dict(module.state_dict(), source, config)
    with torch.no_grad():
        z = module(torch.from_numpy(x)).numpy()
    impl.assert_matches_reference(z, x, weights, config, what)
    # The independent forward of implementations.py is this module's forward: the same
    # float64 ops in the same order (equal to the last bit here; the slack only allows
    # another torch version to pick another kernel).
    mine = impl.forward(source, module.state_dict(), x, options)
    np.testing.assert_allclose(mine, z, rtol=1e-12, atol=1e-14, err_msg=what)
    state = impl.to_torch_state(to_state_dict(weights, source, config))
    fresh.double().eval().load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(torch.from_numpy(x)), torch.from_numpy(z)), what


MMCV_GRID = list(
    itertools.product(
        [1, 2, 3],
        ["gaussian", "embedded_gaussian", "dot_product", "concatenation"],
        [False, True],
        [False, True],
    )
)


@pytest.mark.parametrize(
    ("dims", "mode", "sub_sample", "norm"),
    MMCV_GRID,
    ids=[f"{d}d-{m}-sub{int(s)}-norm{int(n)}" for d, m, s, n in MMCV_GRID],
)
def test_real_mmcv_modules(dims, mode, sub_sample, norm):
    mmcv_cnn = pytest.importorskip("mmcv.cnn")
    cls = {1: mmcv_cnn.NonLocal1d, 2: mmcv_cnn.NonLocal2d, 3: mmcv_cnn.NonLocal3d}[dims]
    # The BatchNorm of the block's rank (mmcv's "BN" is BatchNorm2d, which refuses 3-D and
    # 5-D inputs); eps 1e-3 so a converter that drops norm_cfg's eps is caught.
    norm_cfg = dict(type=f"BN{dims}d", eps=1e-3) if norm else None
    kwargs = dict(in_channels=6, mode=mode, sub_sample=sub_sample, norm_cfg=norm_cfg)
    module = _randomised(cls(**kwargs))
    x = np.random.default_rng(6).normal(size=(2, 6, *EXTENTS[dims]))
    what = f"mmcv NonLocal{dims}d {kwargs}"
    _check_real_module(module, cls(**kwargs), "mmcv", kwargs | dict(spatial_dims=dims), x, what)


def test_real_mmcv_module_with_syncbn_and_another_reduction():
    """mmaction2's configs use SyncBN; reduction=3 gives C' = 8 // 3 = 2."""
    mmcv_cnn = pytest.importorskip("mmcv.cnn")
    kwargs = dict(in_channels=8, reduction=3, norm_cfg=dict(type="SyncBN"), sub_sample=True)
    module = _randomised(mmcv_cnn.NonLocal2d(**kwargs))
    x = np.random.default_rng(7).normal(size=(2, 8, 5, 7))
    fresh = mmcv_cnn.NonLocal2d(**kwargs)
    _check_real_module(module, fresh, "mmcv", kwargs | dict(spatial_dims=2), x, str(kwargs))


def _mmcv_backward(mode: str) -> None:
    mmcv_cnn = pytest.importorskip("mmcv.cnn")
    module = mmcv_cnn.NonLocal2d(4, mode=mode, zeros_init=False).double().train()
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    module(x).sum().backward()


def test_mmcv_concatenation_cannot_be_trained():
    """A known upstream defect, recorded so that a fixed mmcv is noticed: ``concatenation``
    divides the output of its in-place ReLU in place (``pairwise_weight /= N'``), which
    autograd refuses at backward. The converted weights are fine (inference works, see
    test_real_mmcv_modules); training must use another implementation, such as ours."""
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        _mmcv_backward("concatenation")
    # The other modes' in-place division (dot product) does not hit a saved tensor.
    _mmcv_backward("dot_product")


PTV_GRID = list(itertools.product(["softmax", "dot_product"], [False, True], [False, True]))


@pytest.mark.parametrize(
    ("instantiation", "pooled", "norm"),
    PTV_GRID,
    ids=[f"{i}-pool{int(p)}-norm{int(n)}" for i, p, n in PTV_GRID],
)
def test_real_pytorchvideo_modules(instantiation, pooled, norm):
    nonlocal_net = pytest.importorskip("pytorchvideo.layers.nonlocal_net")
    kwargs = dict(
        dim_in=6,
        dim_inner=3,
        pool_size=(1, 2, 2) if pooled else (1, 1, 1),
        instantiation=instantiation,
        norm=torch.nn.BatchNorm3d if norm else None,
        norm_eps=1e-3,  # not the default, so a converter that ignores it is caught
    )
    module = _randomised(nonlocal_net.create_nonlocal(**kwargs))
    x = np.random.default_rng(8).normal(size=(2, 6, 3, 5, 7))
    fresh = nonlocal_net.create_nonlocal(**kwargs)
    _check_real_module(module, fresh, "pytorchvideo", kwargs, x, f"create_nonlocal {kwargs}")


def test_real_modules_run_weights_read_from_other_sources():
    """Canonical weights with every tensor random - a non-zero W_z bias, which mmcv has no
    place for when a norm follows - written for the real mmcv and PyTorchVideo modules,
    load strictly and compute the reference's output."""
    mmcv_cnn = pytest.importorskip("mmcv.cnn")
    nonlocal_net = pytest.importorskip("pytorchvideo.layers.nonlocal_net")
    rng = np.random.default_rng(9)
    mmcv_kwargs = dict(in_channels=6, sub_sample=True, norm_cfg=dict(type="BN2d", eps=1e-3))
    ptv_kwargs = dict(dim_in=6, dim_inner=3, pool_size=(1, 2, 2), instantiation="dot_product")
    for source, module, kwargs, extent in [
        ("mmcv", mmcv_cnn.NonLocal2d(**mmcv_kwargs), mmcv_kwargs | dict(spatial_dims=2), (5, 7)),
        ("pytorchvideo", nonlocal_net.create_nonlocal(**ptv_kwargs), ptv_kwargs, (3, 5, 7)),
    ]:
        config = profile(source, **kwargs)
        weights = random_weights(config, seed=10)  # out.bias is non-zero
        state = impl.to_torch_state(to_state_dict(weights, source, config))
        module.double().eval().load_state_dict(state, strict=True)
        x = rng.normal(size=(2, 6, *extent))
        with torch.no_grad():
            z = module(torch.from_numpy(x)).numpy()
        impl.assert_matches_reference(z, x, weights, config, f"{source} module: z")
