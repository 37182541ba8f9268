"""Read the checkpoint files of published non-local implementations without running their code.

`read_checkpoint` turns a file into plain Python data - dicts, lists, tuples, numbers, strings
and NumPy arrays - whatever wrote it: ``torch.save`` (the zip format of torch >= 1.6), a
Caffe2/Detectron pickle (Python 2 or 3), a NumPy ``.npz`` or a safetensors file. The format
is told by the file's content, never by its name. `find_state_dict` then picks the flat
name -> array mapping out of the usual wrappers.

A pickle is a program: unpickled the ordinary way, it may call any function it names. Here
every name it asks for goes through an allow-list; each allowed name maps to a small builder
of this module that checks its arguments and builds arrays, dicts or tuples - NumPy's own
reconstruction functions and torch's tensor rebuilders are never called, and torch is never
imported. Anything else, and every array of Python objects, raises `UnsafeCheckpointError`
before it is built. A damaged or foreign file raises `FileFormatError` naming the file; only
the operating system's own errors (no such file, a directory) stay `OSError`.
"""

from __future__ import annotations

import _compat_pickle
import math
import os
import pickle
import pickletools
import re
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..io import FileFormatError

FORMATS = (
    "a PyTorch checkpoint written by torch.save (zip format, torch >= 1.6), a pickle of "
    "arrays (Caffe2/Detectron .pkl, Python 2 or 3), a NumPy .npz or a safetensors file"
)
STATE_DICT_WRAPPERS = ("state_dict", "model_state", "model", "module", "blobs", "params")

# The pickle torch < 1.6 wrote first: the magic number 0x1950a86a20f9469cfc6c, protocol 2.
_LEGACY_TORCH = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
# How many bytes of tensors a torch file may build beyond its storages' own size: a tensor
# with stride 0 (an expand()) is legitimate, but 1 byte of storage must not become 1 TB.
_EXPANSION_BYTES = 2**30
# The most an .npz's deflated arrays may expand beyond `_EXPANSION_BYTES` (zeros reach about
# 1000x; real weights compress far less).
_MAX_ZIP_RATIO = 20
# NumPy dtypes a pickle may name: booleans and numbers ('O' would hold Python objects, 'V'
# records whose fields may be objects).
_DTYPE_SPEC = re.compile(r"[<>|=]?[?biufc][0-9]{0,2}")
_STORAGES = {
    "FloatStorage": "f4",
    "DoubleStorage": "f8",
    "HalfStorage": "f2",
    "BFloat16Storage": "u2",  # bfloat16: read as raw 16 bits, widened exactly to float32
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "u1",  # read as bytes, then != 0: a stray byte 2 must not be a bool
}
# Allowed globals -> the _Unpickler method that builds them (the torch ones in torch zips only).
_ALLOWED = {
    "collections.OrderedDict": "_ordered_dict",
    "_codecs.encode": "_encode",
    "numpy.dtype": "_dtype",
    "numpy.ndarray": "_refuse_call",  # only ever the type argument of _reconstruct
    **{f"numpy.{core}.multiarray._reconstruct": "_reconstruct" for core in ("core", "_core")},
    **{f"numpy.{core}.multiarray.scalar": "_scalar" for core in ("core", "_core")},
    **{f"numpy.{core}.numeric._frombuffer": "_frombuffer" for core in ("core", "_core")},
}
_TORCH_ALLOWED = {
    "torch._utils._rebuild_tensor": "_rebuild_tensor",
    "torch._utils._rebuild_tensor_v2": "_rebuild_tensor",
    "torch._utils._rebuild_parameter": "_rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state": "_rebuild_parameter",
    "torch.Size": "_size",
    **{f"torch.{storage}": "_refuse_call" for storage in _STORAGES},
}


class UnsafeCheckpointError(FileFormatError):
    """A checkpoint asks for something a reader must not build: a function, a class, an
    array of Python objects. Nothing it asked for was run.

    Example:
        >>> import os, pickle, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "model.pkl"
        >>> _ = path.write_bytes(pickle.dumps(os.system))  # names os.system; calls nothing
        >>> try:
        ...     read_checkpoint(path)
        ... except UnsafeCheckpointError as exc:
        ...     print(exc)  # doctest: +ELLIPSIS
        '...model.pkl' asks for ...system: refused; a checkpoint reader only builds arrays, ...
    """


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The top-level object of the checkpoint at `path`, every tensor a NumPy array.

    Torch tensors and parameters become C-contiguous arrays of their dtype (bfloat16 becomes
    float32, exactly), ``OrderedDict`` and ``torch.Size`` become ``dict`` and ``tuple`` (the
    ``_metadata`` attribute of a torch state dict is dropped), bytes keys become ``str``, every
    array is writable and in native byte order; ``.npz`` and safetensors files give a dict of
    arrays (a safetensors file's metadata: `nonlocal_core.safetensors.read`). Raises
    `UnsafeCheckpointError` for a pickle asking for anything but arrays and containers,
    `FileFormatError` for a damaged or foreign file (both ValueErrors naming the file),
    `OSError` when the file cannot be opened.

    Example:
        >>> import pickle, tempfile, pathlib
        >>> import numpy as np
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "weights.bin"
        >>> blobs = {"nonlocal_conv3_1_theta_w": np.ones((2, 4, 1, 1, 1), np.float32)}
        >>> _ = path.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
        >>> read_checkpoint(path)["blobs"]["nonlocal_conv3_1_theta_w"].shape
        (2, 4, 1, 1, 1)
        >>> np.savez(path.with_suffix(".npz"), w=np.zeros(3))
        >>> read_checkpoint(path.with_suffix(".npz"))
        {'w': array([0., 0., 0.])}
    """
    name = repr(os.fspath(path))
    with open(path, "rb") as stream:
        head = stream.read(16)
        size = stream.seek(0, os.SEEK_END)
        stream.seek(0)
        if _is_safetensors(head, size):
            from .. import safetensors  # lazily: only this format needs it

            return safetensors.read(path)[0]
        # Everything below reads bytes the file's author chose, through builders of this
        # module only: whatever breaks (zipfile, zlib, the unpickler, a builder's argument
        # check) means a damaged file and becomes FileFormatError.
        try:
            if not head:
                raise FileFormatError(f"{name} is empty; expected {FORMATS}")
            if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
                with zipfile.ZipFile(stream) as archive:
                    return _finish(_read_zip(archive, name), name, size)
            if head.startswith(_LEGACY_TORCH):
                raise FileFormatError(
                    f"{name} is in the legacy format of torch < 1.6, which this reader does "
                    "not parse; re-save it with a newer torch: "
                    "torch.save(torch.load(path, weights_only=True), new_path)"
                )
            if head[:1] not in _PICKLE_STARTS:
                raise FileFormatError(f"{name} is not a checkpoint this reader knows: {FORMATS}")
            result = _Unpickler(stream, name).load()
            if stream.read(1):
                raise FileFormatError(f"{name} has bytes after its pickle: not a single pickle")
            return _finish(result, name, size)
        except FileFormatError as exc:
            if name in str(exc):
                raise
            # Raised by a builder, which does not know the file's name.
            raise type(exc)(f"{name}: {exc}").with_traceback(exc.__traceback__) from None
        except Exception as exc:
            raise FileFormatError(
                f"{name} is damaged or not a checkpoint ({type(exc).__name__}: {exc!s:.200}); "
                f"expected {FORMATS}"
            ) from exc


def find_state_dict(obj: Any) -> dict[str, np.ndarray]:
    """The flat name -> array mapping in a checkpoint `read_checkpoint` returned.

    `obj` itself when it is one, else the first of `STATE_DICT_WRAPPERS` (``state_dict``:
    mmcv/mmaction2, ``model_state``: SlowFast, ``model``, ``module``, ``blobs``: Caffe2,
    ``params``) that holds one; `locate_state_dict` also says which. A mapping qualifies
    when it is non-empty, its keys are strings and every value is an array (a NumPy scalar
    counts, as a 0-d array). Nothing is dropped or flattened: a wrapper with one value of
    another kind (a number, a string, a nested dict) is not a state dict, because a skipped
    entry could be a weight. Raises ValueError naming the top-level keys when none is found.

    Example:
        >>> import numpy as np
        >>> sd = {"conv.weight": np.ones((2, 2, 1, 1, 1)), "conv.bias": np.zeros(2)}
        >>> list(find_state_dict({"epoch": 3, "model_state": sd, "cfg": "..."}))
        ['conv.weight', 'conv.bias']
        >>> find_state_dict({"epoch": 3})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: no state dict found: ... (top-level keys: ['epoch'])
    """
    return locate_state_dict(obj)[1]


def locate_state_dict(obj: Any) -> tuple[str | None, dict[str, np.ndarray]]:
    """``(where, state_dict)``: the wrapper key `find_state_dict` took it from (None when
    `obj` itself is flat) and the state dict.

    Example:
        >>> import numpy as np
        >>> locate_state_dict({"meta": {"epoch": 1}, "state_dict": {"fc.bias": np.zeros(2)}})
        ('state_dict', {'fc.bias': array([0., 0.])})
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f"no state dict found: the checkpoint holds a {type(obj).__name__}")
    flat, why = _as_state_dict(obj)
    if flat is not None:
        return None, flat
    reasons = []
    for key in STATE_DICT_WRAPPERS:
        if key in obj:
            flat, why = _as_state_dict(obj[key])
            if flat is not None:
                return key, flat
            reasons.append(f"{key!r} {why}")
    keys = list(obj)
    shown = f"{keys[:20]}{' ...' if len(keys) > 20 else ''}"
    wrappers = ", ".join(map(repr, STATE_DICT_WRAPPERS))
    detail = "; ".join(reasons) if reasons else f"has none of the keys {wrappers}"
    raise ValueError(
        "no state dict found: the checkpoint is not a flat name -> array mapping and "
        f"{detail} (top-level keys: {shown})"
    )


def _as_state_dict(value: Any) -> tuple[dict[str, np.ndarray] | None, str]:
    """`value` as a flat name -> array dict, or None and why it is not one."""
    if not isinstance(value, Mapping):
        return None, f"holds a {type(value).__name__}, not a dict"
    if not value:
        return None, "is empty"
    for key, entry in value.items():
        if not isinstance(key, str):
            return None, f"has a non-string key {key!r}"
        if not isinstance(entry, np.ndarray | np.generic):
            return None, f"holds a {type(entry).__name__} at {key!r}, not an array"
    return {key: np.asarray(entry) for key, entry in value.items()}, ""


# Format detection ----------------------------------------------------------------------------

# First bytes of a pickle: PROTO (protocol 2+) or an opcode protocols 0 and 1 may start with.
_PICKLE_STARTS = {op.code.encode("latin-1") for op in pickletools.opcodes}


def _is_safetensors(head: bytes, size: int) -> bool:
    """An 8-byte little-endian header length that fits the file, then the JSON header's '{'.

    Tried first: a pickle or a zip starts with bytes that make an absurd length."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= size - 8


def _read_zip(archive: zipfile.ZipFile, name: str) -> Any:
    """A torch.save archive (``<prefix>/data.pkl``) or an .npz (only ``.npy`` entries)."""
    names = archive.namelist()
    # A compressed entry claims its own size: a small file could decompress to anything.
    # torch.save stores its entries uncompressed; np.savez_compressed may deflate, up to
    # the ratio a real array of numbers reaches.
    unpacked = sum(info.file_size for info in archive.infolist())
    packed = sum(info.compress_size for info in archive.infolist())
    if unpacked > _EXPANSION_BYTES + _MAX_ZIP_RATIO * packed:
        raise FileFormatError(
            f"{name} would decompress {packed} bytes into {unpacked}: refused (a zip bomb?)"
        )
    if names and all(entry.endswith(".npy") for entry in names):
        arrays = {}
        for entry in names:
            with archive.open(entry) as stream:
                arrays[entry[: -len(".npy")]] = np.lib.format.read_array(stream, allow_pickle=False)
        return arrays
    pickles = [entry for entry in names if re.fullmatch(r"[^/]+/data\.pkl", entry)]
    if len(pickles) != 1:
        raise FileFormatError(
            f"{name} is a zip archive but neither a torch.save checkpoint (one "
            f"'<archive>/data.pkl', found {len(pickles)}) nor an .npz; expected {FORMATS}"
        )
    prefix = pickles[0][: -len("data.pkl")]
    if any(entry.startswith(prefix + "code/") for entry in names):
        raise FileFormatError(
            f"{name} is a TorchScript archive (torch.jit.save), which holds code; save the "
            "model's state_dict() with torch.save instead"
        )
    compressed = [i.filename for i in archive.infolist() if i.compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise FileFormatError(
            f"{name} has compressed entries {compressed[:3]}: torch.save stores its entries "
            "uncompressed, and a compressed one could claim any size"
        )
    # torch 1.6 - 1.9 wrote no byteorder record: those files are little-endian.
    order = "little"
    if prefix + "byteorder" in names:
        order = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
        if order not in ("little", "big"):
            raise FileFormatError(f"{name}: byteorder {order!r} is neither 'little' nor 'big'")
    with archive.open(pickles[0]) as stream:
        return _Unpickler(stream, name, archive=archive, prefix=prefix, order=order).load()


# The unpickler -------------------------------------------------------------------------------


class _Global:
    """What `_Unpickler.find_class` returns for an allowed name: calls its builder, and can be
    changed by nothing (no __dict__; BUILD on it is refused). One per lookup."""

    __slots__ = ("build", "name", "storage")

    def __init__(self, name: str, build: Callable, storage: str | None = None) -> None:
        self.name, self.build, self.storage = name, build, storage

    def __call__(self, *args, **kwargs):
        return self.build(self, *args, **kwargs)

    def __setstate__(self, state):
        raise UnsafeCheckpointError(f"sets attributes on {self.name}: refused")


class _DType:
    """A dtype a pickle named, kept from NumPy until an array uses it: BUILD on a real
    np.dtype could still turn it into records with object fields."""

    __slots__ = ("endian", "spec")

    def __init__(self, spec: str) -> None:
        self.spec, self.endian = spec, "="

    def __setstate__(self, state) -> None:
        # NumPy's state: (version, endian, subarray, names, fields, ...); a number has no
        # subarray, names or fields.
        if not (
            isinstance(state, tuple)
            and len(state) >= 5
            and state[1] in ("<", ">", "|", "=")
            and state[2:5] == (None, None, None)
        ):
            raise UnsafeCheckpointError(f"makes dtype {self.spec!r} a record type: refused")
        self.endian = state[1]

    def resolve(self) -> np.dtype:
        dtype = np.dtype(self.spec)
        return dtype.newbyteorder(self.endian) if self.endian in "<>" else dtype


class _PickledArray(np.ndarray):
    """The array NumPy's ``_reconstruct`` would make: its state is checked before NumPy
    fills it (a list of objects instead of bytes is an object array)."""

    def __setstate__(self, state) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise FileFormatError("an array's pickled state is not a 4- or 5-tuple")
        shape, dtype, fortran, data = state[-4:]
        if not isinstance(dtype, _DType):
            raise UnsafeCheckpointError(f"builds an array of {type(dtype).__name__}: refused")
        dtype = dtype.resolve()
        if isinstance(data, str):  # Python 2 pickles, read with encoding='latin1'
            data = data.encode("latin-1")
        if not isinstance(data, bytes | bytearray):
            raise UnsafeCheckpointError("builds an array of Python objects: refused")
        shape = _ints(shape, "an array's shape")
        if math.prod(shape) * dtype.itemsize != len(data):
            raise FileFormatError(
                f"an array of shape {shape} and dtype {dtype} has {len(data)} bytes"
            )
        np.ndarray.__setstate__(self, (1, shape, dtype, bool(fortran), data))


class _Storage:
    """One torch storage: its elements as a 1-D array, and the storage class named."""

    __slots__ = ("array", "kind")

    def __init__(self, array: np.ndarray, kind: str) -> None:
        self.array, self.kind = array, kind

    def __setstate__(self, state):
        raise UnsafeCheckpointError(f"sets attributes on a {self.kind}: refused")


class _Unpickler(pickle.Unpickler):
    """An unpickler that builds only what `_ALLOWED` (and, for a torch zip, `_TORCH_ALLOWED`)
    names, each through its own checked builder below."""

    def __init__(self, stream, name: str, *, archive=None, prefix="", order="little") -> None:
        # latin1: Python 2 byte strings (array data, names) arrive as str, byte for byte.
        super().__init__(stream, encoding="latin1")
        self.name, self.archive, self.prefix = name, archive, prefix
        self.order = "<" if order == "little" else ">"
        self.storages: dict[str, _Storage] = {}
        self.budget = _EXPANSION_BYTES

    def find_class(self, module: str, name: str) -> _Global:
        # Python 2 names (__builtin__, copy_reg): overriding find_class skips this mapping.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualified = f"{module}.{name}"
        method = _ALLOWED.get(qualified)
        if method is None and self.archive is not None:
            method = _TORCH_ALLOWED.get(qualified)
        if method is None:
            raise UnsafeCheckpointError(
                f"{self.name} asks for {qualified}: refused; a checkpoint reader only builds "
                "arrays, dicts, lists and numbers"
            )
        storage = _STORAGES.get(name) if module == "torch" else None
        return _Global(qualified, getattr(self, method), storage)

    def persistent_load(self, pid):
        """A torch storage: ``('storage', storage class, key, location, element count)``."""
        if self.archive is None:
            raise FileFormatError(f"{self.name} refers to data outside its pickle")
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise FileFormatError(f"{self.name}: unknown persistent id {pid!r:.80}")
        _, kind, key, _location, count = pid
        if not (isinstance(kind, _Global) and kind.storage and isinstance(key, str)):
            raise FileFormatError(f"{self.name}: storage {key!r:.40} of an unknown type")
        if key in self.storages:
            if self.storages[key].kind != kind.name:
                raise FileFormatError(f"{self.name}: storage {key!r} read as two dtypes")
            return self.storages[key]
        dtype = np.dtype(kind.storage).newbyteorder(self.order)
        entry = self.archive.getinfo(f"{self.prefix}data/{key}")
        # Checked before reading: the size a zip entry claims is the most zipfile reads.
        if not isinstance(count, int) or count * dtype.itemsize != entry.file_size:
            raise FileFormatError(
                f"{self.name}: storage {key!r} has {entry.file_size} bytes for {count!r} "
                f"elements of {kind.name}"
            )
        data = self.archive.read(entry)
        self.budget += len(data) * 8
        self.storages[key] = _Storage(np.frombuffer(data, dtype), kind.name)
        return self.storages[key]

    # Builders: the first argument is the _Global the pickle called.

    def _refuse_call(self, which: _Global, *args, **kwargs):
        raise UnsafeCheckpointError(f"{self.name} calls {which.name}: refused")

    def _ordered_dict(self, which, items=()):
        return OrderedDict(items)

    def _encode(self, which, text, encoding="utf-8"):
        # How Python 3 pickles bytes at protocol 2: encode(latin-1 text, 'latin1').
        if not (isinstance(text, str) and encoding in ("latin1", "latin-1")):
            raise UnsafeCheckpointError(f"{self.name} calls _codecs.encode other than for bytes")
        return text.encode("latin-1")

    def _dtype(self, which, spec, align=False, copy=False) -> _DType:
        if not (isinstance(spec, str) and _DTYPE_SPEC.fullmatch(spec)):
            raise UnsafeCheckpointError(
                f"{self.name} asks for an array of dtype {spec!r:.40}: refused; a checkpoint "
                "reader only builds arrays of numbers (no Python objects, no records)"
            )
        return _DType(spec)

    def _reconstruct(self, which, subtype, shape, code) -> _PickledArray:
        if not (isinstance(subtype, _Global) and subtype.name == "numpy.ndarray"):
            raise UnsafeCheckpointError(f"{self.name} reconstructs a {subtype!r:.40}: refused")
        _ints(shape, "an array's shape")
        # Shape (0,) whatever the pickle says: __setstate__ gives the real one, with its data.
        return _PickledArray((0,), np.uint8)

    def _scalar(self, which, dtype, data):
        if not isinstance(dtype, _DType):
            raise UnsafeCheckpointError(f"{self.name} builds a scalar of a {type(dtype)}")
        dtype = dtype.resolve()
        if isinstance(data, str):
            data = data.encode("latin-1")
        if not isinstance(data, bytes) or len(data) != dtype.itemsize:
            raise FileFormatError(f"{self.name}: a {dtype} scalar is not {dtype.itemsize} bytes")
        return np.frombuffer(data, dtype)[0]

    def _frombuffer(self, which, buffer, dtype, shape, order):
        # How protocol 5 pickles an array: numpy._core.numeric._frombuffer.
        if not (isinstance(dtype, _DType) and isinstance(buffer, bytes | bytearray)):
            raise UnsafeCheckpointError(f"{self.name} calls {which.name} with other than bytes")
        dtype, shape = dtype.resolve(), _ints(shape, "an array's shape")
        if order not in ("C", "F") or math.prod(shape) * dtype.itemsize != len(buffer):
            raise FileFormatError(f"{self.name}: {len(buffer)} bytes are no array of {shape}")
        # A view, not a copy: one buffer reused by many calls must not multiply memory
        # (`_finish` makes the copies, against a budget). BUILD on it is checked too.
        return np.frombuffer(buffer, dtype).reshape(shape, order=order).view(_PickledArray)

    def _size(self, which, dims=()):
        return _ints(dims, "a torch.Size")

    def _rebuild_tensor(self, which, storage, offset, size, stride, *ignored):
        # Extra arguments (requires_grad, backward hooks, metadata) do not change the values.
        if not isinstance(storage, _Storage):
            raise FileFormatError(f"{self.name}: a tensor without a storage")
        size, stride = _ints(size, "a tensor's size"), _ints(stride, "a tensor's stride")
        (offset,) = _ints((offset,), "a tensor's offset")
        elements, itemsize = storage.array.size, storage.array.itemsize
        count = math.prod(size)
        end = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if len(size) != len(stride) or (count and end >= elements) or offset > elements:
            raise FileFormatError(
                f"{self.name}: a tensor of size {size}, stride {stride}, offset {offset} "
                f"reaches past its storage of {elements} elements"
            )
        self.budget -= count * itemsize
        if self.budget < 0:
            raise FileFormatError(
                f"{self.name}: its tensors hold over {_EXPANSION_BYTES} bytes more than its "
                "storages (stride-0 expansion): refused"
            )
        view = np.lib.stride_tricks.as_strided(
            storage.array[offset:],
            shape=size,
            strides=[s * itemsize for s in stride],
            writeable=False,
        )
        array = np.array(view, dtype=view.dtype.newbyteorder("="), order="C")
        if storage.kind == "torch.BFloat16Storage":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        elif storage.kind == "torch.BoolStorage":
            array = array != 0
        return array.view(_PickledArray)  # BUILD on it is checked too

    def _rebuild_parameter(self, which, data, *ignored):
        if not isinstance(data, np.ndarray):
            raise FileFormatError(f"{self.name}: a parameter without a tensor")
        return data


def _ints(values: Any, what: str) -> tuple[int, ...]:
    """`values` as a tuple of non-negative ints (not bools, not arrays), else FileFormatError."""
    if not (
        isinstance(values, tuple | list)
        and len(values) <= 64
        and all(type(v) is int and v >= 0 for v in values)
    ):
        raise FileFormatError(f"{what} is not a sequence of non-negative ints: {values!r:.60}")
    return tuple(values)


# After unpickling ----------------------------------------------------------------------------


def _finish(obj: Any, name: str, file_size: int) -> Any:
    """`obj` as plain data: dicts for OrderedDicts, str for bytes keys, plain native-order
    ndarrays that own their memory; anything left of the unpickler's helpers is refused.
    Shared parts stay shared (and are converted once: a pickle of n doubling lists is 2**n
    paths). Arrays that are views of the pickle's bytes are copied, so arrays never alias
    one another; a pickle can reuse one buffer in many arrays, so the copies may hold at
    most the file's size plus `_EXPANSION_BYTES`."""
    done: dict[int, Any] = {}
    active: set[int] = set()
    budget = [file_size + _EXPANSION_BYTES]

    def convert(value: Any) -> Any:
        if isinstance(value, str | bytes | bytearray | int | float | complex | np.generic):
            return value
        if value is None:
            return value
        if id(value) in done:
            return done[id(value)]
        if id(value) in active:
            raise FileFormatError(f"{name} holds a container that contains itself")
        active.add(id(value))
        if isinstance(value, np.ndarray):
            array = value.view(np.ndarray)
            if not (value.flags.owndata and array.dtype.isnative):
                budget[0] -= array.nbytes
                if budget[0] < 0:
                    raise FileFormatError(
                        f"{name}: its arrays hold over {_EXPANSION_BYTES} bytes more than the "
                        "file (one buffer reused by many arrays): refused"
                    )
                array = array.astype(array.dtype.newbyteorder("="), order="C", copy=True)
            result = array
        elif isinstance(value, dict):
            result = {}
            for key, entry in value.items():
                if isinstance(key, bytes):
                    key = _decode(key)
                if key in result:
                    raise FileFormatError(f"{name} holds the key {key!r} twice (str and bytes)")
                result[convert(key)] = convert(entry)
        elif isinstance(value, list | tuple | set | frozenset):
            result = type(value)(convert(entry) for entry in value)
        elif isinstance(value, _DType):
            result = value.resolve()
        elif isinstance(value, _Storage):
            result = convert(value.array)
        else:
            raise FileFormatError(f"{name} holds a {type(value).__name__}, which is no data")
        active.discard(id(value))
        done[id(value)] = result
        return result

    return convert(obj)


def _decode(key: bytes) -> str:
    """A bytes key as str: UTF-8, or byte for byte (latin-1) when it is not UTF-8."""
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return key.decode("latin-1")
