"""The safe checkpoint readers: real files read exactly, hostile ones refused, damaged ones clean.

`read_checkpoint` must give back what ``torch.save``, Caffe2/Detectron pickles (Python 2 and
3), ``.npz`` and safetensors files hold, bit for bit; refuse every pickle that asks for code
with `UnsafeCheckpointError` - without running any of it - and fail on damaged files with
`FileFormatError` only. torch is used here to write files, never by the reader.
"""

from __future__ import annotations

import builtins
import functools
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonlocal_core.convert import readers
from nonlocal_core.convert.readers import (
    FileFormatError,
    UnsafeCheckpointError,
    find_state_dict,
    locate_state_dict,
    read_checkpoint,
)
from tests.hostile import fuzz_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def torch_bytes(obj, **options) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer, **options)
    return buffer.getvalue()


def assert_same(array, tensor) -> None:
    """`array` holds exactly `tensor`'s values: dtype, shape and every bit (bf16 via float32)."""
    import torch

    expected = tensor.detach()
    expected = (expected.float() if expected.dtype == torch.bfloat16 else expected).numpy()
    assert type(array) is np.ndarray
    assert array.dtype == expected.dtype and array.shape == expected.shape
    assert array.dtype.isnative and array.flags.c_contiguous and array.flags.writeable
    assert array.tobytes() == np.ascontiguousarray(expected).tobytes()


def rewrite_zip(data: bytes, change: Callable[[str, bytes], bytes | None]) -> bytes:
    """The zip `data` with each entry replaced by ``change(name, content)`` (None drops it)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            content = change(name, source.read(name))
            if content is not None:
                target.writestr(name, content)
    return out.getvalue()


def special_values(tensor):
    """`tensor` (float) with NaN, infinities, -0.0 and a subnormal among its values."""
    flat = tensor.reshape(-1)
    specials = [float("nan"), float("inf"), float("-inf"), -0.0, 1e-40]
    for i, value in enumerate(specials[: flat.numel()]):
        flat[i] = value
    return tensor


# torch.save files ----------------------------------------------------------------------------


def model_state(torch):
    """A Conv3d + BatchNorm3d state dict with trained running statistics."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(2, 3, 1), torch.nn.BatchNorm3d(3))
    model(torch.randn(2, 2, 2, 3, 3))
    return model.state_dict()


def test_torch_state_dict_is_read_exactly(torch, tmp_path):
    state = model_state(torch)
    path = write(tmp_path, "model.pth", torch_bytes(state))
    result = read_checkpoint(path)
    assert type(result) is dict and list(result) == list(state)
    for key, tensor in state.items():
        assert_same(result[key], tensor)
    assert result["1.num_batches_tracked"].dtype == np.int64
    found = find_state_dict(result)
    assert list(found) == list(result) and all(found[k] is result[k] for k in result)


@pytest.mark.parametrize(
    "dtype", ["float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8"]
)
def test_every_dtype_bit_for_bit(torch, tmp_path, dtype):
    kind = getattr(torch, dtype)
    if kind.is_floating_point:
        tensor = special_values(torch.randn(3, 4, dtype=torch.float64)).to(kind)
    else:
        info = torch.iinfo(kind)
        tensor = torch.tensor([[info.min, -1, 0, 1], [2, 3, 5, info.max]], dtype=kind)
    result = read_checkpoint(write(tmp_path, "t.pt", torch_bytes({"t": tensor, "v": tensor.t()})))
    assert_same(result["t"], tensor)
    assert_same(result["v"], tensor.t())


def test_bool_uint8_and_scalars(torch, tmp_path):
    values = {
        "mask": torch.tensor([[True, False], [False, True]]),
        "bytes": torch.arange(250, 256, dtype=torch.uint8),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 3),
        "size": torch.Size([2, 3]),
        "parameter": torch.nn.Parameter(torch.randn(2)),
    }
    result = read_checkpoint(write(tmp_path, "t.pt", torch_bytes(values)))
    for key in ("mask", "bytes", "scalar", "empty", "parameter"):
        assert_same(result[key], values[key])
    assert result["size"] == (2, 3) and type(result["size"]) is tuple


def test_views_offsets_and_shared_storages(torch, tmp_path):
    base = special_values(torch.randn(5, 6))
    views = {
        "base": base,
        "transposed": base.t(),
        "corner": base[1:, 2:],
        "row": base[3],
        "strided": base[::2, 1::3],
        "expanded": base[0, :1].expand(4, 3),
        "permuted": torch.randn(2, 3, 4, 5).permute(3, 1, 0, 2),
    }
    data = torch_bytes(views)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        storages = [n for n in archive.namelist() if "/data/" in n]
    assert len(storages) == 2  # saved as views of two storages, not as copies
    result = read_checkpoint(write(tmp_path, "views.pt", data))
    for key, tensor in views.items():
        assert_same(result[key], tensor)
    result["row"][0] = 123.0  # each array owns its values
    assert result["base"][3, 0] != 123.0


def test_wrappers_of_slowfast_and_mmcv(torch, tmp_path):
    state = model_state(torch)
    slowfast = {"epoch": 3, "model_state": state, "cfg": "TRAIN:\n  ENABLE: True\n"}
    mmcv = {
        "meta": {"epoch": 12, "mmcv_version": "1.7.0", "CLASSES": ("a", "b")},
        "state_dict": state,
    }
    for name, wrapper, key in [("slowfast", slowfast, "model_state"), ("mmcv", mmcv, "state_dict")]:
        result = read_checkpoint(write(tmp_path, name, torch_bytes(wrapper)))
        where, found = locate_state_dict(result)
        assert where == key and list(found) == list(state)
        for entry, tensor in state.items():
            assert_same(found[entry], tensor)
    assert result["meta"] == {"epoch": 12, "mmcv_version": "1.7.0", "CLASSES": ("a", "b")}
    assert read_checkpoint(write(tmp_path, "sf", torch_bytes(slowfast)))["cfg"] == slowfast["cfg"]


def test_big_endian_archive(torch, tmp_path):
    values = {"w": special_values(torch.randn(3, 4)), "b": torch.randn(4)[1:]}

    def swap(name: str, content: bytes) -> bytes:
        if name.endswith("/byteorder"):
            return b"big"
        if "/data/" in name:
            return np.frombuffer(content, "<f4").astype(">f4").tobytes()
        return content

    result = read_checkpoint(write(tmp_path, "big.pt", rewrite_zip(torch_bytes(values), swap)))
    for key, tensor in values.items():
        assert_same(result[key], tensor)


def test_numpy_arrays_inside_a_torch_file(torch, tmp_path):
    values = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(0.5)}
    result = read_checkpoint(write(tmp_path, "np.pt", torch_bytes(values)))
    np.testing.assert_array_equal(result["a"], values["a"])
    assert result["s"] == 0.5


def test_stride_zero_bomb_is_refused(torch, tmp_path):
    # 4 bytes of storage, 2 GiB of tensor: a real torch.save of an expand().
    data = torch_bytes({"bomb": torch.zeros(1).expand(2**29)})
    assert len(data) < 4096
    with pytest.raises(FileFormatError, match="stride-0"):
        read_checkpoint(write(tmp_path, "bomb.pt", data))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_legacy_and_torchscript_files_are_named(torch, tmp_path):
    legacy = torch_bytes({"w": torch.ones(2)}, _use_new_zipfile_serialization=False)
    with pytest.raises(FileFormatError, match=r"legacy format of torch < 1\.6.*re-save"):
        read_checkpoint(write(tmp_path, "old.pth", legacy))
    scripted = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    with pytest.raises(FileFormatError, match="TorchScript"):
        read_checkpoint(write(tmp_path, "scripted.pt", scripted.getvalue()))


def test_storage_size_must_match(torch, tmp_path):
    data = torch_bytes({"w": torch.ones(4)})
    short = rewrite_zip(data, lambda n, c: c[:-4] if "/data/" in n else c)
    with pytest.raises(FileFormatError, match="bytes for 4 elements"):
        read_checkpoint(write(tmp_path, "short.pt", short))
    missing = rewrite_zip(data, lambda n, c: None if "/data/" in n else c)
    with pytest.raises(FileFormatError, match=r"missing\.pt"):
        read_checkpoint(write(tmp_path, "missing.pt", missing))


class FakeStorage:
    def __init__(self, kind: str, key: str, count: int) -> None:
        self.kind, self.key, self.count = kind, key, count


class FakeTensor:
    def __init__(self, storage, offset, size, stride) -> None:
        self.args = (storage, offset, size, stride, False, OrderedDict())


def crafted_torch_file(obj, storages: dict[str, bytes]) -> bytes:
    """A torch.save-like zip whose data.pkl pickles `obj` with FakeTensor/FakeStorage as the
    tensors and storages torch would write: arguments torch itself would never write."""
    import torch

    class Pickler(pickle.Pickler):
        def persistent_id(self, value):
            if isinstance(value, FakeStorage):
                return ("storage", getattr(torch, value.kind), value.key, "cpu", value.count)
            return None

        def reducer_override(self, value):
            if isinstance(value, FakeTensor):
                return torch._utils._rebuild_tensor_v2, value.args
            return NotImplemented

    payload = io.BytesIO()
    Pickler(payload, protocol=2).dump(obj)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("archive/data.pkl", payload.getvalue())
        archive.writestr("archive/byteorder", "little")
        for key, content in storages.items():
            archive.writestr(f"archive/data/{key}", content)
    return out.getvalue()


FOUR = FakeStorage("FloatStorage", "0", 4)
FOUR_BYTES = {"0": np.arange(4, dtype="<f4").tobytes()}


@pytest.mark.parametrize(
    "offset, size, stride",
    [(0, (5,), (1,)), (4, (1,), (1,)), (0, (3,), (2,)), (1, (2, 2), (2, 1)), (5, (0,), (1,))],
)
def test_tensor_past_its_storage_is_refused(torch, tmp_path, offset, size, stride):
    data = crafted_torch_file({"t": FakeTensor(FOUR, offset, size, stride)}, FOUR_BYTES)
    with pytest.raises(FileFormatError, match="past its storage"):
        read_checkpoint(write(tmp_path, "t.pt", data))


@pytest.mark.parametrize(
    "tensor",
    [
        FakeTensor(FOUR, 0, (2,), (-1,)),
        FakeTensor(FOUR, -1, (2,), (1,)),
        FakeTensor(FOUR, 0, (2,), (1, 1)),
        FakeTensor(FOUR, 0, (True,), (1,)),
        FakeTensor(FOUR, 0.0, (2,), (1,)),
        FakeTensor("not a storage", 0, (2,), (1,)),
        FakeTensor(FakeStorage("FloatStorage", "missing", 4), 0, (2,), (1,)),
    ],
)
def test_bad_tensor_arguments_are_refused(torch, tmp_path, tensor):
    with pytest.raises(FileFormatError, match=r"'.*t\.pt'"):
        read_checkpoint(write(tmp_path, "t.pt", crafted_torch_file({"t": tensor}, FOUR_BYTES)))


def test_crafted_edge_cases_that_are_valid(torch, tmp_path):
    tensors = {
        "empty_at_end": FakeTensor(FOUR, 4, (0,), (1,)),
        "broadcast": FakeTensor(FOUR, 1, (2, 3), (0, 1)),
        "overlapping": FakeTensor(FOUR, 0, (3, 2), (1, 1)),
    }
    result = read_checkpoint(write(tmp_path, "t.pt", crafted_torch_file(tensors, FOUR_BYTES)))
    assert result["empty_at_end"].shape == (0,)
    assert result["broadcast"].tolist() == [[1, 2, 3], [1, 2, 3]]
    assert result["overlapping"].tolist() == [[0, 1], [1, 2], [2, 3]]


def test_one_storage_read_as_two_dtypes_is_refused(torch, tmp_path):
    other = FakeStorage("IntStorage", "0", 4)
    data = crafted_torch_file(
        {"a": FakeTensor(FOUR, 0, (4,), (1,)), "b": FakeTensor(other, 0, (4,), (1,))}, FOUR_BYTES
    )
    with pytest.raises(FileFormatError, match="two dtypes"):
        read_checkpoint(write(tmp_path, "t.pt", data))


# Caffe2 / Detectron pickles ------------------------------------------------------------------

BLOBS = {
    "conv1_w": np.random.default_rng(0).normal(size=(4, 3, 1, 3, 3)).astype(np.float32),
    "nonlocal_conv3_1_theta_b": np.linspace(-1, 1, 4, dtype=np.float32),
    "res_conv1_bn_riv": np.array([1.5, np.inf, np.nan, -0.0], np.float32),
    "model_iter": np.array([400000], np.int64),
    "lr": np.array(0.01, np.float32),
}


def assert_blobs(found: dict, *, ordered: bool = True) -> None:
    assert list(found) == list(BLOBS) if ordered else sorted(found) == sorted(BLOBS)
    for key, value in BLOBS.items():
        assert found[key].dtype == value.dtype and found[key].shape == value.shape
        assert found[key].tobytes() == value.tobytes()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_caffe2_pickle(tmp_path, protocol):
    checkpoint = {"blobs": BLOBS, "cfg": "MODEL:\n  TYPE: resnet_video\n"}
    path = write(tmp_path, "c2_weights.pkl", pickle.dumps(checkpoint, protocol=protocol))
    result = read_checkpoint(path)
    assert result["cfg"] == checkpoint["cfg"]
    assert locate_state_dict(result)[0] == "blobs"
    assert_blobs(find_state_dict(result))


def test_python3_bytes_keys_become_str(tmp_path):
    blobs = {key.encode(): value for key, value in BLOBS.items()}
    path = write(tmp_path, "bytes_keys.pkl", pickle.dumps({b"blobs": blobs}, protocol=2))
    assert_blobs(find_state_dict(read_checkpoint(path)))


def test_byte_order_fortran_and_scalars(tmp_path):
    values = {
        "big": np.arange(6, dtype=">f8").reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
        "scalar": np.float32(1.25),
        "flag": np.array([True, False]),
        "complex": np.array([1 + 2j], np.complex64),
    }
    result = read_checkpoint(write(tmp_path, "v.pkl", pickle.dumps(values, protocol=2)))
    for key in ("fortran", "flag", "complex"):
        np.testing.assert_array_equal(result[key], values[key], strict=True)
    assert result["big"].dtype == np.float64 and result["big"].tolist() == values["big"].tolist()
    assert result["scalar"] == np.float32(1.25) and type(result["scalar"]) is np.float32


def py2_pickle(value) -> bytes:
    """`value` pickled as Python 2's cPickle with NumPy 1.x wrote it at protocol 2: byte
    strings as (SHORT_)BINSTRING, arrays through numpy.core.multiarray._reconstruct."""

    def text(s: str | bytes) -> bytes:
        raw = s.encode("latin-1") if isinstance(s, str) else s
        if len(raw) < 256:
            return b"U" + bytes([len(raw)]) + raw
        return b"T" + struct.pack("<i", len(raw)) + raw

    def dump(v) -> bytes:
        if isinstance(v, np.ndarray):
            shape = b"(" + b"".join(b"J" + struct.pack("<i", n) for n in v.shape) + b"t"
            dtype = b"cnumpy\ndtype\n" + text(v.dtype.str[1:]) + b"K\x00K\x01\x87R"
            state = (
                b"(K\x03" + text(v.dtype.str[0]) + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
            )
            return (
                b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
                + text("b")
                + b"\x87R(K\x01"
                + shape
                + dtype
                + state
                + b"\x89"
                + text(v.tobytes())
                + b"tb"
            )
        if isinstance(v, OrderedDict):  # py2: OrderedDict([[key, value], ...])
            items = b"".join(b"]" + b"(" + dump(k) + dump(x) + b"e" for k, x in v.items())
            return b"ccollections\nOrderedDict\n](" + items + b"e\x85R"
        if isinstance(v, dict):
            return b"}(" + b"".join(dump(k) + dump(x) for k, x in v.items()) + b"u"
        if isinstance(v, str | bytes):
            return text(v)
        if isinstance(v, int):
            return b"J" + struct.pack("<i", v)
        raise TypeError(v)

    return b"\x80\x02" + dump(value) + b"."


def test_python2_pickle(tmp_path):
    checkpoint = {"blobs": OrderedDict(BLOBS), "cfg": b"TRAIN:\n  BATCH_SIZE: 8\n", "iter": 7}
    result = read_checkpoint(write(tmp_path, "py2.pkl", py2_pickle(checkpoint)))
    assert result["cfg"] == "TRAIN:\n  BATCH_SIZE: 8\n" and result["iter"] == 7
    assert type(result["blobs"]) is dict
    assert_blobs(find_state_dict(result))


# Other formats, detected by content ----------------------------------------------------------


def test_npz_any_name(tmp_path):
    buffer = io.BytesIO()
    np.savez(buffer, **BLOBS)
    assert_blobs(read_checkpoint(write(tmp_path, "weights.pt", buffer.getvalue())))


def test_safetensors(tmp_path):
    safetensors = pytest.importorskip(
        "nonlocal_core.safetensors", reason="nonlocal_core.safetensors is written in parallel"
    )
    path = tmp_path / "model.bin"
    safetensors.write(path, BLOBS, {"format": "pt"})
    assert_blobs(read_checkpoint(path), ordered=False)  # safetensors sorts its names


def test_torch_file_by_any_name(torch, tmp_path):
    result = read_checkpoint(write(tmp_path, "weights.npz", torch_bytes({"w": torch.ones(2)})))
    assert result["w"].tolist() == [1.0, 1.0]


# Hostile pickles -----------------------------------------------------------------------------


class Call:
    """Pickles as ``function(*args)``: what a hostile checkpoint runs when unpickled."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def payloads(marker: Path) -> dict[str, object]:
    """Hostile objects, each of which would create `marker` (or fail loudly) if it ran."""
    touch = f"touch {marker}"
    return {
        "os.system": Call(os.system, touch),
        "eval": Call(builtins.eval, f"open({str(marker)!r}, 'w')"),
        "exec": Call(builtins.exec, f"import os; os.system({touch!r})"),
        "subprocess.Popen": Call(subprocess.Popen, ["touch", str(marker)]),
        "numpy.load": Call(np.load, str(marker)),
        "functools.partial": Call(functools.partial(os.system, touch)),
        "nested": {"state_dict": {"w": np.zeros(2), "x": [Call(os.system, touch)]}},
        "object array": np.array([None, "x"], dtype=object),
        "record with objects": np.zeros(2, dtype=[("a", "O"), ("b", "f4")]),
    }


HOSTILE = list(payloads(Path("x")))


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_pickle_is_refused_and_nothing_runs(tmp_path, kind, protocol):
    marker = tmp_path / "pwned"
    path = write(tmp_path, "model.pkl", pickle.dumps(payloads(marker)[kind], protocol=protocol))
    with pytest.raises(UnsafeCheckpointError, match=r"'.*model\.pkl'.*refused") as info:
        read_checkpoint(path)
    assert not marker.exists()
    if kind == "os.system":
        assert "asks for posix.system: refused" in str(info.value) or os.name != "posix"


def test_hostile_pickle_inside_a_torch_zip(torch, tmp_path):
    marker = tmp_path / "pwned"
    hostile = pickle.dumps({"w": Call(os.system, f"touch {marker}")}, protocol=2)
    data = rewrite_zip(
        torch_bytes({"w": torch.ones(2)}), lambda n, c: hostile if n.endswith("data.pkl") else c
    )
    with pytest.raises(UnsafeCheckpointError, match=r"(posix|nt)\.system: refused"):
        read_checkpoint(write(tmp_path, "model.pt", data))
    assert not marker.exists()


def pickle_calling(module: str, name: str, args: tuple) -> bytes:
    """A protocol-2 pickle of ``module.name(*args)``, for names this process need not import."""
    body = pickle.dumps(args, protocol=2)[2:-1]
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + body + b"R."


@pytest.mark.parametrize(
    "module, name",
    [
        ("torch", "load"),
        ("torch.serialization", "load"),
        ("torch._utils", "_rebuild_qtensor"),
        ("torch.storage", "UntypedStorage"),
        ("torch", "FloatStorage"),  # a storage class may name a storage, never be called
        ("builtins", "getattr"),
        ("__builtin__", "eval"),  # a Python 2 name
        ("copy_reg", "_reconstructor"),
        ("numpy", "ndarray"),  # only ever _reconstruct's type argument
    ],
)
def test_globals_off_the_list_are_refused(torch, tmp_path, module, name):
    payload = pickle_calling(module, name, ("x",))
    plain = write(tmp_path, "plain.pkl", payload)
    zipped = write(
        tmp_path,
        "zipped.pt",
        rewrite_zip(torch_bytes({}), lambda n, c: payload if n.endswith("data.pkl") else c),
    )
    for path in (plain, zipped):
        with pytest.raises(UnsafeCheckpointError, match="refused"):
            read_checkpoint(path)


def test_torch_rebuilders_are_refused_outside_a_torch_zip(tmp_path):
    path = write(tmp_path, "t.pkl", pickle_calling("torch._utils", "_rebuild_tensor_v2", ()))
    with pytest.raises(UnsafeCheckpointError, match=r"torch\._utils\._rebuild_tensor_v2: refused"):
        read_checkpoint(path)


def swap(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1 and len(old) == len(new)
    return data.replace(old, new)


def test_smuggled_object_arrays_are_refused(tmp_path):
    # A numeric dtype name with record fields set afterwards, by BUILD on the dtype.
    records = pickle.dumps(np.zeros(2, dtype=[("a", "<f4"), ("b", "<f4")]), protocol=2)
    records = swap(records, b"X\x02\x00\x00\x00V8", b"X\x02\x00\x00\x00f8")
    # A numeric dtype whose data is a list of Python objects.
    objects = pickle.dumps(np.array([None, None], dtype=object), protocol=2)
    objects = swap(objects, b"X\x02\x00\x00\x00O8", b"X\x02\x00\x00\x00f8")
    # Attributes set on an allowed global.
    build = b"\x80\x02ccollections\nOrderedDict\n}X\x01\x00\x00\x00aK\x01sb."
    for name, data, message in [
        ("records", records, "record type"),
        ("objects", objects, "Python objects"),
        ("build", build, "sets attributes"),
    ]:
        with pytest.raises(UnsafeCheckpointError, match=message):
            read_checkpoint(write(tmp_path, name, data))


# Damaged files -------------------------------------------------------------------------------


@functools.cache
def good_files() -> dict[str, bytes]:
    """One small file of each format (a function, not a fixture: Hypothesis would print it)."""
    npz = io.BytesIO()
    np.savez(npz, w=np.arange(4.0))
    files = {
        "pickle": pickle.dumps({"blobs": {"w": np.arange(4, dtype=np.float32)}}, protocol=2),
        "py2": py2_pickle({"blobs": {"w": np.arange(3, dtype=np.float32)}}),
        "npz": npz.getvalue(),
    }
    try:
        import torch
    except ImportError:
        return files
    x = torch.arange(12.0).reshape(3, 4)
    files["torch"] = torch_bytes({"model_state": {"w": x, "v": x.t()[1:], "n": torch.tensor(3)}})
    return files


@st.composite
def damaged(draw) -> tuple[str, bytes]:
    files = good_files()
    source = draw(st.sampled_from(sorted(files)))
    good = files[source]
    kind = draw(st.sampled_from(["truncate", "flip", "random", "append"]))
    if kind == "truncate":
        end = draw(st.integers(0, len(good) - 1))
        return f"{source} truncated to {end}", good[:end]
    if kind == "flip":
        data = bytearray(good)
        positions = draw(st.lists(st.integers(0, len(good) - 1), min_size=1, max_size=4))
        for p in positions:
            data[p] ^= draw(st.integers(1, 255))
        return f"{source} flipped at {positions}", bytes(data)
    if kind == "random":
        return "random bytes", draw(st.binary(max_size=64))
    return f"{source} with junk appended", good + draw(st.binary(min_size=1, max_size=16))


@fuzz_settings(150)
@given(case=damaged())
def test_damaged_files_fail_cleanly(case):
    what, data = case
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), "damaged.bin", data)
        try:
            read_checkpoint(path)
        except FileFormatError as exc:  # UnsafeCheckpointError included
            assert str(path) in str(exc), what
        # Anything else propagates and fails the test, with `what` in Hypothesis's report.


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "is empty"),
        (b"\x00\x01binary junk\xff" * 3, "not a checkpoint this reader knows"),
        (b"PK\x03\x04" + b"\x00" * 40, "damaged or not a checkpoint"),
        (pickle.dumps([1, 2]) + b"trailing", "bytes after its pickle"),
    ],
)
def test_foreign_files(tmp_path, data, message):
    with pytest.raises(FileFormatError, match=message):
        read_checkpoint(write(tmp_path, "file.bin", data))


def test_os_errors_stay_os_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(IsADirectoryError):
        read_checkpoint(tmp_path)


def test_self_referencing_pickle_is_refused(tmp_path):
    looped: list = []
    looped.append(looped)
    with pytest.raises(FileFormatError, match="contains itself"):
        read_checkpoint(write(tmp_path, "loop.pkl", pickle.dumps(looped, protocol=2)))


def test_shared_parts_are_converted_once(tmp_path):
    # 60 levels of [previous, previous]: 2**60 paths, 60 objects.
    value: list = [np.zeros(1)]
    for _ in range(60):
        value = [value, value]
    result = read_checkpoint(write(tmp_path, "dag.pkl", pickle.dumps(value, protocol=2)))
    assert result[0] is result[1]


# find_state_dict -----------------------------------------------------------------------------


def test_find_state_dict_order_and_reasons():
    sd = {"a.weight": np.ones(2)}
    assert locate_state_dict(sd) == (None, sd)
    assert locate_state_dict({"model": sd, "state_dict": {"b": np.zeros(1)}})[0] == "state_dict"
    # A wrapper with one non-array is not a state dict: the next is tried.
    assert locate_state_dict({"model": {"w": np.ones(1), "n": 3}, "params": sd}) == ("params", sd)
    assert find_state_dict({"blobs": {"w": np.float32(2)}})["w"].shape == ()
    with pytest.raises(
        ValueError, match=r"'model' holds a int at 'n'.*top-level keys: \['model'\]"
    ):
        find_state_dict({"model": {"w": np.ones(1), "n": 3}})
    with pytest.raises(ValueError, match="'state_dict' is empty"):
        find_state_dict({"state_dict": {}})
    with pytest.raises(ValueError, match="holds a list"):
        find_state_dict([np.ones(1)])


def test_importing_the_readers_imports_no_framework():
    code = "import nonlocal_core.convert.readers, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_allow_list_names_only_builders():
    # Every allowed name maps to a builder method; none is a callable from elsewhere.
    for method in {**readers._ALLOWED, **readers._TORCH_ALLOWED}.values():
        assert callable(getattr(readers._Unpickler, method))


class _ReusedBuffer:
    """Pickles as NumPy's protocol-5 array rebuild, ``_frombuffer(buffer, ...)``, over one
    shared `buffer`: the pickle stores the bytes once and reuses them by reference."""

    def __init__(self, buffer: bytes) -> None:
        self.buffer = buffer

    def __reduce__(self):
        rebuild = np._core.numeric._frombuffer
        return rebuild, (self.buffer, np.dtype("u1"), (len(self.buffer),), "C")


def test_one_buffer_reused_by_many_arrays_cannot_multiply_memory(tmp_path, monkeypatch):
    buffer = bytes(1 << 20)
    data = pickle.dumps({f"w{i}": _ReusedBuffer(buffer) for i in range(12)}, protocol=4)
    assert len(data) < 2 * len(buffer)  # 12 MiB of arrays from a 1 MiB file
    path = write(tmp_path, "reused.pkl", data)
    arrays = read_checkpoint(path)  # within the budget: independent copies
    arrays["w0"][0] = 1
    assert arrays["w1"][0] == 0 and sum(a.nbytes for a in arrays.values()) == 12 << 20
    monkeypatch.setattr(readers, "_EXPANSION_BYTES", 4 << 20)
    with pytest.raises(FileFormatError, match="one buffer reused by many arrays"):
        read_checkpoint(path)


def test_compressed_archives_cannot_claim_any_size(torch, tmp_path, monkeypatch):
    plain = torch_bytes({"w": torch.zeros(1 << 18)})
    deflated = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(plain)) as src, zipfile.ZipFile(deflated, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), zipfile.ZIP_DEFLATED)
    with pytest.raises(FileFormatError, match="compressed entries"):
        read_checkpoint(write(tmp_path, "deflated.pt", deflated.getvalue()))
    npz = tmp_path / "zeros.npz"
    np.savez_compressed(npz, w=np.zeros(1 << 20))  # 8 MiB of zeros in a few KiB
    assert read_checkpoint(npz)["w"].shape == (1 << 20,)
    monkeypatch.setattr(readers, "_EXPANSION_BYTES", 1 << 20)
    with pytest.raises(FileFormatError, match="zip bomb"):
        read_checkpoint(npz)
