"""Canonical weight tables, initialisation, validation and the save/load file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from nonlocal_core import (
    INSTANTIATIONS,
    FileFormatError,
    NonLocalConfig,
    WeightError,
    check_weights,
    init_weights,
    load,
    random_weights,
    save,
    weight_shapes,
)
from nonlocal_core import safetensors as core_st

# The canonical file and the legacy one: `save` picks the layout by the name's suffix.
FILENAMES = ["block.safetensors", "block.npz"]


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


def _assert_same_weights(got: dict, expected: dict) -> None:
    """Same names, and for each the same dtype, shape and bits."""
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype, name
        assert got[name].shape == value.shape and got[name].tobytes() == value.tobytes(), name


@pytest.mark.parametrize("filename", FILENAMES)
@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_save_load_round_trip_is_exact(tmp_path, instantiation, filename):
    # spec: W-2
    cfg = NonLocalConfig(
        6, spatial_dims=3, subsample=instantiation != "gaussian", instantiation=instantiation
    )
    w = random_weights(cfg, seed=1)
    path = tmp_path / filename
    save(path, cfg, w)
    cfg2, w2 = load(path)
    assert cfg2 == cfg
    _assert_same_weights(w2, w)


@pytest.mark.parametrize("filename", FILENAMES)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int8])
def test_save_load_keeps_the_weights_dtype(tmp_path, dtype, filename):
    cfg = NonLocalConfig(4, instantiation="dot_product", norm=None)
    w = {k: (v * 8).astype(dtype) for k, v in random_weights(cfg, seed=2).items()}
    path = tmp_path / filename
    save(path, cfg, w)
    cfg2, w2 = load(path)
    assert cfg2 == cfg
    _assert_same_weights(w2, w)
    assert all(v.flags.writeable for v in w2.values())


def test_load_tells_the_layouts_apart_by_content_not_name(tmp_path):
    cfg = NonLocalConfig(4, instantiation="gaussian")
    w = random_weights(cfg, seed=3)
    save(tmp_path / "block.safetensors", cfg, w)
    save(tmp_path / "block.NPZ", cfg, w)  # the suffix in any case
    assert not zipfile.is_zipfile(tmp_path / "block.safetensors")
    assert zipfile.is_zipfile(tmp_path / "block.NPZ")
    (tmp_path / "block.safetensors").rename(tmp_path / "was-safetensors.npz")
    (tmp_path / "block.NPZ").rename(tmp_path / "was-npz.safetensors")
    for name in ("was-safetensors.npz", "was-npz.safetensors"):
        cfg2, w2 = load(tmp_path / name)
        assert cfg2 == cfg
        _assert_same_weights(w2, w)


def test_saved_file_is_plain_npz_with_json_header(tmp_path):
    cfg = NonLocalConfig(4)
    path = tmp_path / "block.npz"
    save(path, cfg, init_weights(cfg))
    with np.load(path, allow_pickle=False) as archive:
        header = json.loads(archive["__config__"].tobytes())
    assert header == {"spec_version": "1.0", "config": cfg.to_dict()}


def test_a_legacy_npz_written_by_hand_still_loads(tmp_path):
    # What `save` wrote before safetensors: plain np.savez plus the JSON __config__ entry.
    cfg = NonLocalConfig(4, instantiation="concatenation")
    w = random_weights(cfg, seed=4)
    header = json.dumps({"spec_version": "1.0", "config": cfg.to_dict()}).encode()
    np.savez(tmp_path / "old.npz", **w, __config__=np.frombuffer(header, np.uint8))
    cfg2, w2 = load(tmp_path / "old.npz")
    assert cfg2 == cfg
    _assert_same_weights(w2, w)


def test_saved_file_is_safetensors_with_the_config_in_its_metadata(tmp_path):
    cfg = NonLocalConfig(4, instantiation="dot_product")
    w = init_weights(cfg)
    path = tmp_path / "block.safetensors"
    save(path, cfg, w)
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    assert size % 8 == 0 and data[8 + size - 1 : 8 + size] in (b"}", b" ")
    metadata = header.pop("__metadata__")
    assert metadata == {
        "format": "nonlocal_block",
        "spec_version": "1.0",
        "config": json.dumps(cfg.to_dict()),
    }
    assert list(header) == sorted(w)  # in name order, back to back
    offset = 0
    for name in sorted(w):
        assert header[name] == {
            "dtype": "F64",
            "shape": list(w[name].shape),
            "data_offsets": [offset, offset + w[name].nbytes],
        }
        offset += w[name].nbytes
    assert len(data) == 8 + size + offset


@pytest.mark.parametrize("filename", ["other.npz", "other.safetensors"])
def test_load_rejects_foreign_files(tmp_path, filename):
    path = tmp_path / filename
    if filename.endswith(".npz"):
        np.savez(path, a=np.zeros(2))
    else:  # a model's weights, as written by the safetensors package: format "pt"
        core_st.write(path, {"a": np.zeros(2)}, {"format": "pt"})
    with pytest.raises(FileFormatError, match="not a saved block"):
        load(path)


@pytest.mark.parametrize("filename", FILENAMES)
def test_save_rejects_weights_that_do_not_fit(tmp_path, filename):
    with pytest.raises(WeightError, match="missing"):
        save(tmp_path / filename, NonLocalConfig(4), {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8, reason="long double is float64 here")
def test_save_names_a_weight_safetensors_cannot_store(tmp_path):
    cfg = NonLocalConfig(4, instantiation="gaussian", norm=None)
    w = {**init_weights(cfg), "g.bias": np.zeros(2, np.longdouble)}
    with pytest.raises(ValueError, match=r"tensor 'g.bias' has dtype float128"):
        save(tmp_path / "block.safetensors", cfg, w)
    assert list(tmp_path.iterdir()) == []


# nonlocal_core.safetensors ----------------------------------------------------------------


def test_safetensors_round_trip_of_every_numpy_dtype(tmp_path):
    arrays = {
        "bool": np.array([[True, False, True]]),
        "u8": np.arange(5, dtype=np.uint8),
        "i8": np.array([-128, 127], np.int8),
        "u16": np.array([65535], np.uint16),
        "i16": np.array([-3], np.int16),
        "u32": np.array([2**32 - 1], np.uint32),
        "i32": np.arange(-3, 3, dtype=np.int32).reshape(2, 3),
        "u64": np.array([2**64 - 1], np.uint64),
        "i64": np.array([-(2**63)], np.int64),
        "f16": np.array([np.inf, -0.0, 6e-8], np.float16),
        "f32": np.array([np.nan, 1e-45], np.float32),
        "f64": np.arange(24.0).reshape(2, 3, 4).transpose(2, 0, 1),  # not C-contiguous
        "scalar": np.array(2.5),
        "empty": np.zeros((2, 0, 3), np.float32),
        "big-endian": np.arange(4, dtype=">i4"),
    }
    path = tmp_path / "t.safetensors"
    core_st.write(path, arrays, {"k": "v", "": "empty key"})
    got, metadata = core_st.read(path)
    assert metadata == {"k": "v", "": "empty key"}
    assert list(got) == sorted(arrays)
    for name, value in arrays.items():
        assert got[name].dtype == value.dtype.newbyteorder("="), name
        assert got[name].dtype.isnative and got[name].flags.writeable, name
        assert (
            got[name].shape == value.shape
            and got[name].tobytes() == value.astype(got[name].dtype).tobytes()
        ), name


@pytest.mark.parametrize(
    ("arrays", "metadata", "error", "message"),
    [
        ({"w": np.zeros(2, object)}, None, ValueError, "tensor 'w' has dtype object"),
        ({"w": np.zeros(2, complex)}, None, ValueError, "tensor 'w' has dtype complex128"),
        ({"w": np.array(["a"])}, None, ValueError, "tensor 'w' has dtype <U1"),
        ({"w": [[1.0], [1.0, 2.0]]}, None, ValueError, "tensor 'w' cannot be read"),
        ({3: np.zeros(2)}, None, TypeError, "tensor name 3 is a int"),
        ({"__metadata__": np.zeros(2)}, None, ValueError, "cannot be named '__metadata__'"),
        ({"w": np.zeros(2)}, {"k": 1}, TypeError, "metadata 'k': 1 is not str -> str"),
        ({"w": np.zeros(2)}, {1: "v"}, TypeError, "metadata 1: 'v'"),
        ({"w": np.zeros(2)}, "k=v", TypeError, "metadata must be a mapping"),
        ([np.zeros(2)], None, TypeError, "arrays must be a mapping"),
    ],
)
def test_safetensors_write_rejects_what_the_format_cannot_hold(
    tmp_path, arrays, metadata, error, message
):
    path = tmp_path / "t.safetensors"
    with pytest.raises(error, match=re.escape(message)):
        core_st.write(path, arrays, metadata)
    assert list(tmp_path.iterdir()) == []


def test_real_safetensors_reads_what_this_module_writes(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    safe_open = pytest.importorskip("safetensors").safe_open
    cfg = NonLocalConfig(4, instantiation="concatenation")
    w = random_weights(cfg, seed=5)
    w["g.weight"] = w["g.weight"].astype(np.float16)
    path = tmp_path / "block.safetensors"
    save(path, cfg, w)
    _assert_same_weights(safetensors_numpy.load_file(path), w)
    with safe_open(path, framework="np") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "nonlocal_block" and metadata["spec_version"] == "1.0"
    assert NonLocalConfig.from_dict(json.loads(metadata["config"])) == cfg


def test_this_module_reads_what_real_safetensors_writes(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(6)
    arrays = {
        "bool": rng.random((3, 2)) > 0.5,
        "u8": rng.integers(0, 255, 7, dtype=np.uint8),
        "i16": rng.integers(-999, 999, (2, 2), dtype=np.int16),
        "i64": rng.integers(-(2**62), 2**62, 3),
        "f16": rng.normal(size=5).astype(np.float16),
        "f32": rng.normal(size=(2, 3, 1)).astype(np.float32),
        "f64": rng.normal(size=(4, 4)),
        "scalar": np.array(-1.5),
        "empty": np.zeros((0, 4)),
    }
    path = tmp_path / "theirs.safetensors"
    safetensors_numpy.save_file(arrays, path, metadata={"who": "safetensors", "n": "9"})
    got, metadata = core_st.read(path)
    assert metadata == {"who": "safetensors", "n": "9"}
    _assert_same_weights(got, arrays)


def test_a_block_saved_by_torch_in_bfloat16_loads_exactly_as_float32(tmp_path):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    cfg = NonLocalConfig(4, instantiation="embedded_gaussian", norm=None)
    tensors = {k: torch.from_numpy(v) for k, v in random_weights(cfg, seed=7).items()}
    # Signed zeros, infinities, NaN, a subnormal and values bfloat16 must round.
    tensors["out.bias"] = torch.tensor([0.0, -0.0, 1.0, -2.5])
    tensors["g.bias"] = torch.tensor([float("inf"), float("-inf")])
    tensors["phi.bias"] = torch.tensor([float("nan"), 1e-40])
    tensors["theta.bias"] = torch.tensor([3e38, 0.1])
    bf16 = {k: t.to(torch.bfloat16).contiguous() for k, t in tensors.items()}
    metadata = {"format": "nonlocal_block", "spec_version": "1.0"}
    metadata["config"] = json.dumps(cfg.to_dict())
    path = tmp_path / "block.safetensors"
    safetensors_torch.save_file(bf16, path, metadata=metadata)
    cfg2, w2 = load(path)
    assert cfg2 == cfg
    expected = {k: t.float().numpy() for k, t in bf16.items()}
    _assert_same_weights(w2, expected)  # bit for bit, NaN and subnormals included
    assert all(v.dtype == np.float32 for v in w2.values())
    assert np.isnan(w2["phi.bias"][0]) and 0 < w2["phi.bias"][1] < np.finfo(np.float32).tiny
    assert np.signbit(w2["out.bias"][1]) and w2["theta.bias"][1] != np.float32(0.1)


def test_import_nonlocal_core_imports_no_framework():
    code = (
        "import sys, nonlocal_core, nonlocal_core.vectors\n"
        "bad = [m for m in ('torch', 'tensorflow', 'keras', 'jax', 'safetensors')\n"
        "       if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
