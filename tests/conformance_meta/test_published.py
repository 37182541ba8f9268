"""The adapters of the published implementations (`nonlocal_conformance.published`) and the
generator of docs/published.md's table.

Cheap: no suite run. The adapters declare what their profile can express (every config the
suite may draw builds, or is declined for a documented reason), decline the rest with the
profile's reason, hold the canonical weights bit for bit, and refuse mismatched ones by name.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from nonlocal_conformance.adapter import Adapter, Unsupported
from nonlocal_conformance.backends import known_backends, load_adapter
from nonlocal_conformance.published import ADAPTERS
from nonlocal_conformance.strategies import cases
from nonlocal_core import INSTANTIATIONS, POOL_POSITIONS, NonLocalConfig, random_weights
from nonlocal_core.profiles import ProfileError, source_kwargs

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "published_conformance", ROOT / "scripts" / "published_conformance.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = _load_script()


def _adapter(name: str):
    pytest.importorskip("torch")
    pytest.importorskip({"mmcv": "mmcv.cnn", "pytorchvideo": "pytorchvideo.layers"}[name])
    return load_adapter(name)


def _expressible(source: str, config: NonLocalConfig) -> bool:
    try:
        source_kwargs(source, config)
    except ProfileError:
        return False
    return True


# Registration and imports ---------------------------------------------------------------------


def test_builtin_names_point_at_the_published_adapters():
    names = known_backends()
    assert names["mmcv"] == ADAPTERS["mmcv"]
    assert names["pytorchvideo"] == ADAPTERS["pytorchvideo"]
    for name in ADAPTERS:
        adapter = _adapter(name)
        assert isinstance(adapter, Adapter)
        assert adapter.name == name


def test_importing_the_adapter_modules_imports_no_framework():
    """torch and the published packages are imported when an adapter is constructed."""
    code = (
        "import sys, nonlocal_conformance, nonlocal_conformance.backends, "
        "nonlocal_conformance.published.mmcv, nonlocal_conformance.published.pytorchvideo\n"
        "loaded = [m for m in ('torch', 'mmcv', 'mmengine', 'pytorchvideo') if m in sys.modules]\n"
        "print(loaded)"
    )
    pytest.importorskip("mmcv")
    pytest.importorskip("pytorchvideo")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_missing_package_is_named_with_the_pip_extra(monkeypatch):
    from nonlocal_conformance.backends import BackendError
    from nonlocal_conformance.published import _torch

    monkeypatch.delitem(sys.modules, "nonlocal_conformance.published.mmcv", raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        _torch.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mmengine" else real(name, *a),
    )
    with pytest.raises(BackendError, match=r"not installed: mmengine.*nonlocal-block\[mmcv\]"):
        load_adapter("mmcv")
    monkeypatch.delitem(sys.modules, "nonlocal_conformance.published.mmcv", raising=False)


# Capabilities against the profile ----------------------------------------------------------


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_every_config_the_suite_draws_is_expressible(name):
    """200 configs drawn inside the declared capabilities (the suite's own strategy): the
    profile expresses every one, so no draw is declined for a reason a field could state."""
    adapter = _adapter(name)
    refused = []

    @settings(
        max_examples=200,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(cases(adapter.capabilities, "float64", training=None))
    def draw(case):
        config = case.config
        assert adapter.capabilities.supports(config)
        if not _expressible(adapter.source, config):
            refused.append(config)

    draw()
    assert not refused, f"{name} declares configs its profile refuses: {refused[:3]}"


def _grid(dims: int):
    """Configs over every choice the capability fields restrict (one width, C = 8)."""
    windows = [False, True, (1,) * dims, (3,) * dims]
    for inst, ci, scale, sub, pool, norm, eps, residual, fmt in itertools.product(
        INSTANTIATIONS,
        [4, 2, 3],  # rules default (8 // 2), divisor (8 // 4), any
        [None, False, 0.5],
        windows,
        POOL_POSITIONS,
        ["batch", None],
        [1e-5, 1e-3],
        [True, False],
        ["channels_first", "channels_last"],
    ):
        softmax = inst in ("gaussian", "embedded_gaussian")
        if (scale is not None and not softmax) or (sub is False and pool == POOL_POSITIONS[1]):
            continue  # no effect: no scale outside the softmax, no pool position unpooled
        yield NonLocalConfig(
            8,
            spatial_dims=dims,
            instantiation=inst,
            inter_channels=ci,
            logit_scale=scale,
            subsample=sub,
            pool_position=pool,
            norm=norm,
            norm_eps=eps,
            residual=residual,
            data_format=fmt,
        )


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_capabilities_declare_exactly_what_the_profile_expresses(name):
    """Over a grid of every restricted choice, declared == expressible, but for pool
    positions without pooling (no effect: the profile accepts both, the capabilities name
    the implementation's own)."""
    adapter = _adapter(name)
    caps = adapter.capabilities
    disagree = []
    counted = 0
    for dims in (1, 2, 3):
        for config in _grid(dims):
            declared, expressible = caps.supports(config), _expressible(adapter.source, config)
            counted += declared
            if declared == expressible:
                continue
            if config.subsample is None and expressible:
                continue
            disagree.append((declared, config))
    assert not disagree, f"{len(disagree)} disagreements, e.g. {disagree[:2]}"
    assert counted > 50


@pytest.mark.parametrize(
    "name",
    [
        "nonlocal_conformance.published",
        "nonlocal_conformance.published._torch",
        "nonlocal_conformance.published.mmcv",
        "nonlocal_conformance.published.pytorchvideo",
    ],
)
def test_docstring_examples(name):
    if name.endswith(("mmcv", "pytorchvideo")):
        _adapter(name.rsplit(".", 1)[-1])  # skips without the package
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0


def test_the_scripts_docstring_examples():
    result = doctest.testmod(script, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0


# Build, decline, weights ------------------------------------------------------------------


MMCV = NonLocalConfig(6, spatial_dims=2, instantiation="concatenation", subsample=True)
PTV = NonLocalConfig(6, spatial_dims=3, inter_channels=3, subsample=(1, 2, 3))
PTV = PTV.replace(pool_position="before_projection", norm_eps=1e-3)
CONFIGS = {"mmcv": MMCV, "pytorchvideo": PTV}


def _weights(config: NonLocalConfig, dtype: str, zero_out_bias: bool = True):
    weights = {k: v.astype(dtype) for k, v in random_weights(config, seed=3).items()}
    if zero_out_bias and config.norm is not None:
        weights["out.bias"] = np.zeros_like(weights["out.bias"])
    return weights


@pytest.mark.parametrize(
    ("name", "config", "reason"),
    [
        ("mmcv", MMCV.replace(inter_channels=4), "inter_channels=4"),
        ("mmcv", MMCV.replace(instantiation="embedded_gaussian", logit_scale=0.5), "logit scale"),
        ("mmcv", MMCV.replace(subsample=(1, 2)), "its arguments give another config"),
        ("pytorchvideo", PTV.replace(instantiation="gaussian"), "instantiation='gaussian'"),
        ("pytorchvideo", PTV.replace(logit_scale=False), "a logit scale other than C'^-1/2"),
        ("pytorchvideo", PTV.replace(residual=False), "residual=False"),
    ],
)
def test_an_inexpressible_config_is_declined_with_the_reason(name, config, reason):
    adapter = _adapter(name)
    with pytest.raises(Unsupported, match=re.escape(reason)):
        adapter.build(config, _weights(config, "float32"), dtype="float32", device="cpu")


def test_mmcv_declines_a_w_z_bias_it_has_no_place_for():
    adapter = _adapter("mmcv")
    weights = _weights(MMCV, "float64", zero_out_bias=False)
    with pytest.raises(Unsupported, match="non-zero W_z bias"):
        adapter.build(MMCV, weights, dtype="float64", device="cpu")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(ADAPTERS))
def test_build_then_export_round_trips_bit_for_bit_and_training_changes_nothing(name, dtype):
    adapter = _adapter(name)
    config = CONFIGS[name]
    weights = _weights(config, dtype)
    block = adapter.build(config, weights, dtype=dtype, device="cpu")
    x = np.random.default_rng(0).normal(size=(2, 6, 2, 5, 7)[: 2 + config.spatial_dims])
    out = adapter.forward(block, x.astype(dtype), training=True)  # BN statistics restored
    assert out.dtype == dtype and out.z.shape == x.shape
    exported = adapter.export_weights(block)
    assert sorted(exported) == sorted(weights)
    for key, value in weights.items():
        assert exported[key].dtype == np.dtype(dtype), key
        assert np.array_equal(exported[key], value), key


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_mismatched_weights_are_refused_naming_the_weight(name):
    adapter = _adapter(name)
    config = CONFIGS[name]
    good = _weights(config, "float32")
    bad = {
        "g.bias": {k: v for k, v in good.items() if k != "g.bias"},
        "phi.extra": {**good, "phi.extra": good["g.bias"]},
        "theta.weight": {**good, "theta.weight": np.zeros((3, 6, 2), np.float32)},
        "norm.running_var": {**good, "norm.running_var": -good["norm.running_var"]},
    }
    for named, weights in bad.items():
        with pytest.raises(ValueError, match=re.escape(named)):
            adapter.build(config, weights, dtype="float32", device="cpu")


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_gradients_have_the_canonical_names_and_shapes(name):
    adapter = _adapter(name)
    config = CONFIGS[name].replace(instantiation="dot_product")
    weights = _weights(config, "float64")
    block = adapter.build(config, weights, dtype="float64", device="cpu")
    x = np.random.default_rng(1).normal(size=(2, 6, 2, 5, 7)[: 2 + config.spatial_dims])
    grads = adapter.gradients(block, x, np.ones_like(x))
    trained = {k: v.shape for k, v in weights.items() if not k.startswith("norm.running_")}
    assert {k: v.shape for k, v in grads.items()} == {"x": x.shape, **trained}
    assert np.abs(grads["out.bias"]).max() > 0


@pytest.mark.parametrize("training", [False, True])
def test_mmcvs_w_z_bias_gradient_is_the_references(training):
    """mmcv has no W_z bias before its norm (the converter folds it into the running mean);
    the adapter differentiates a zero bias added there: in inference that is the gradient
    of the canonical block, and in training (batch statistics cancel it) it is zero."""
    from nonlocal_conformance.backward import gradient_bounds
    from nonlocal_conformance.dtypes import Precision
    from nonlocal_conformance.suite import assert_within

    adapter = _adapter("mmcv")
    config = MMCV.replace(instantiation="dot_product")
    weights = _weights(config, "float64")
    block = adapter.build(config, weights, dtype="float64", device="cpu")
    rng = np.random.default_rng(4)
    x, cotangent = rng.normal(size=(2, 6, 5, 7)), rng.normal(size=(2, 6, 5, 7))
    got = adapter.gradients(block, x, cotangent, training=training)
    want, bounds = gradient_bounds(
        x, weights, config, cotangent, precision=Precision.default("float64"), training=training
    )
    for name in ("out.bias", "out.weight", "x"):
        assert_within(got[name], want[name], bounds[name], name)
    assert (np.abs(got["out.bias"]).max() < 1e-9) == training


def test_mmcvs_concatenation_gradient_is_the_documented_upstream_failure():
    """mmcv divides its in-place ReLU's output in place (non_local.py line 161): autograd
    refuses. When a fixed mmcv is installed this fails, and so does the documented table."""
    adapter = _adapter("mmcv")
    weights = _weights(MMCV, "float64")
    block = adapter.build(MMCV, weights, dtype="float64", device="cpu")
    x = np.random.default_rng(2).normal(size=(2, 6, 5, 7))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        adapter.gradients(block, x, np.ones_like(x))
    assert ("mmcv", "test_gradients_match_reference[concatenation]") in script.EXPLANATIONS


# The docs table ------------------------------------------------------------------------------


def _report(backend: str, failed: str | None = None, dtype: str = "float32") -> dict:
    tests = [
        {
            "check": "test_output_matches_reference_in_inference",
            "params": "dot_product-3",
            "outcome": "passed",
            "examples": 12,
            "declined": 2,
            "decline_reasons": {f"{backend} cannot express this config: x": 2},
        },
        {
            "check": "test_attention_matches_reference",
            "params": "dot_product",
            "outcome": "skipped",
            "examples": None,
            "declined": 0,
            "decline_reasons": {},
        },
        {
            "check": "test_batch_elements_are_independent_in_inference",
            "params": "gaussian",
            "outcome": "skipped",
            "examples": 0,
            "declined": 50,
            "decline_reasons": {"every one": 50},
        },
    ]
    if failed:
        check, _, params = failed.partition("[")
        tests.append(
            {
                "check": check,
                "params": params.rstrip("]"),
                "outcome": "failed",
                "examples": 0,
                "declined": 0,
                "decline_reasons": {},
                "failures": [{"error": "RuntimeError: boom", "case": "Case(...)"}],
            }
        )
    return {
        "format": "nonlocal-conformance-report/1",
        "backend": backend,
        "adapter_name": backend,
        "versions": {backend: "1.2.3", "torch": "2.0"},
        "dtype": dtype,
        "device": "cpu",
        "hypothesis_profile": "ci",
        "tests": tests,
    }


def test_the_table_counts_checks_examples_and_declines():
    known = "test_gradients_match_reference[concatenation]"
    reports = [_report("pytorchvideo"), _report("mmcv", failed=known)]
    text = script.render(reports)
    rows = [line for line in text.splitlines() if line.startswith("| mmcv")]
    assert rows == ["| mmcv | 1.2.3 | torch 2.0 | float32 | 1 | 2 | 1 | 1 | 12 | 52 |"]
    assert "- mmcv (float32): every one: 50" in text
    assert f"`{known}` (float32, RuntimeError): mmcv's concatenation cannot be trained" in text
    assert script.unexplained(reports) == []


def _docs(tmp_path: Path, block: str) -> Path:
    page = tmp_path / "published.md"
    page.write_text(f"# title\n\n{script.BEGIN}\n{block}{script.END}\n\nafter\n")
    return page


def _write(tmp_path: Path, *reports: dict) -> list[str]:
    paths = []
    for i, report in enumerate(reports):
        path = tmp_path / f"r{i}.json"
        path.write_text(json.dumps(report))
        paths.append(str(path))
    return paths


def test_check_mode_passes_when_the_docs_match_and_write_mode_updates_them(tmp_path, capsys):
    paths = _write(tmp_path, _report("mmcv"), _report("pytorchvideo"))
    page = _docs(tmp_path, "old table\n")
    assert script.main([*paths, "--check", "--docs", str(page)]) == 1
    out = capsys.readouterr().out
    assert "-old table" in out and "python scripts/published_conformance.py" in out
    assert script.main([*paths, "--docs", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# title\n") and text.endswith(f"{script.END}\n\nafter\n")
    assert "| pytorchvideo | 1.2.3 |" in text
    assert script.main([*paths, "--check", "--docs", str(page)]) == 0
    # Rows follow the order of RUNS (mmcv first), whatever the order of the files.
    assert text.index("| mmcv |") < text.index("| pytorchvideo |")


def test_check_mode_fails_on_an_unexplained_failure(tmp_path, capsys):
    paths = _write(tmp_path, _report("mmcv", failed="test_new_check[x]"))
    page = _docs(tmp_path, "")
    script.main([*paths, "--docs", str(page)])
    assert script.main([*paths, "--check", "--docs", str(page)]) == 1
    err = capsys.readouterr().err
    assert "without an explanation" in err and "mmcv: test_new_check[x]" in err
    assert "**not explained yet**" in page.read_text()


def test_the_page_has_the_generated_block():
    page = (ROOT / "docs" / "published.md").read_text()
    assert script.BEGIN in page and script.END in page
    assert "published.md" in (ROOT / "mkdocs.yml").read_text()
