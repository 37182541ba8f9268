"""Canonical weight tables, initialisation, validation and the save/load file."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from nonlocal_core import (
    INSTANTIATIONS,
    NonLocalConfig,
    WeightError,
    check_weights,
    init_weights,
    load,
    random_weights,
    save,
    weight_shapes,
)


def test_weight_shapes_embedded_with_context_and_norm():
    cfg = NonLocalConfig(8, inter_channels=3, context_channels=5)
    assert weight_shapes(cfg) == {
        "theta.weight": (3, 8),
        "theta.bias": (3,),
        "phi.weight": (3, 5),
        "phi.bias": (3,),
        "g.weight": (3, 5),
        "g.bias": (3,),
        "out.weight": (8, 3),
        "out.bias": (8,),
        "norm.gamma": (8,),
        "norm.beta": (8,),
        "norm.running_mean": (8,),
        "norm.running_var": (8,),
    }


def test_weight_shapes_per_instantiation():
    gaussian = weight_shapes(NonLocalConfig(8, instantiation="gaussian", norm=None))
    assert set(gaussian) == {"g.weight", "g.bias", "out.weight", "out.bias"}
    concat = weight_shapes(NonLocalConfig(8, instantiation="concatenation"))
    assert concat["concat.weight"] == (8,)
    assert "concat.weight" not in weight_shapes(NonLocalConfig(8, instantiation="dot_product"))


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
@pytest.mark.parametrize("norm", ["batch", None])
def test_init_follows_the_spec(instantiation, norm):
    # spec: INIT-1
    cfg = NonLocalConfig(64, instantiation=instantiation, norm=norm)
    w = init_weights(cfg, seed=0)
    for name, value in w.items():
        assert value.dtype == np.float64 and value.shape == weight_shapes(cfg)[name]
        if name.endswith(".bias") or name in ("norm.gamma", "norm.beta", "norm.running_mean"):
            assert np.all(value == 0), name
        elif name == "norm.running_var":
            assert np.all(value == 1)
        elif name == "out.weight" and norm is None:
            assert np.all(value == 0)
        else:  # N(0, 0.01^2)
            assert 0.005 < value.std() < 0.015 and abs(value.mean()) < 0.005, name


def test_init_is_seeded():
    cfg = NonLocalConfig(8)
    a, b = init_weights(cfg, seed=3), init_weights(cfg, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["theta.weight"], init_weights(cfg, seed=4)["theta.weight"])


def test_check_weights_names_missing_extra_and_misshaped():
    # spec: W-1
    cfg = NonLocalConfig(4, instantiation="dot_product")
    w = init_weights(cfg)
    check_weights(w, cfg)
    with pytest.raises(WeightError, match=r"missing weight\(s\) \['g.bias'\]"):
        check_weights({k: v for k, v in w.items() if k != "g.bias"}, cfg)
    with pytest.raises(WeightError, match=r"unexpected weight\(s\) \['concat.weight'\]"):
        check_weights({**w, "concat.weight": np.zeros(4)}, cfg)
    with pytest.raises(WeightError, match=r"'phi.weight' has shape \(2, 3\), expected \(2, 4\)"):
        check_weights({**w, "phi.weight": np.zeros((2, 3))}, cfg)
    with pytest.raises(WeightError, match="running_var"):
        check_weights({**w, "norm.running_var": -np.ones(4)}, cfg)


def test_save_load_round_trip_is_exact(tmp_path):
    # spec: W-2
    cfg = NonLocalConfig(6, spatial_dims=3, subsample=True, instantiation="concatenation")
    w = random_weights(cfg, seed=1)
    path = tmp_path / "block.npz"
    save(path, cfg, w)
    cfg2, w2 = load(path)
    assert cfg2 == cfg
    assert set(w2) == set(w) and all(np.array_equal(w[k], w2[k]) for k in w)


def test_saved_file_is_plain_npz_with_json_header(tmp_path):
    cfg = NonLocalConfig(4)
    path = tmp_path / "block.npz"
    save(path, cfg, init_weights(cfg))
    with np.load(path, allow_pickle=False) as archive:
        header = json.loads(archive["__config__"].tobytes())
    assert header == {"spec_version": "1.0", "config": cfg.to_dict()}


def test_load_rejects_foreign_files(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.zeros(2))
    with pytest.raises(ValueError, match="not a saved block"):
        load(path)


def test_save_rejects_weights_that_do_not_fit(tmp_path):
    with pytest.raises(WeightError, match="missing"):
        save(tmp_path / "x.npz", NonLocalConfig(4), {})


def test_import_nonlocal_core_imports_no_framework():
    code = (
        "import sys, nonlocal_core, nonlocal_core.vectors\n"
        "bad = [m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
