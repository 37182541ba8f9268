"""Reading golden-vector case files (written by `nonlocal_core.vectors`) back as arrays.

Reading never trusts the file: every key, tensor record, dtype, shape and value is checked,
and the arrays must fit the case's config, before anything is returned. A file that fails
raises `VectorFileError` (a ValueError) naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .config import SPEC_MAJOR, NonLocalConfig, is_compatible_version
from .io import FileFormatError, brief
from .shapes import check_shapes
from .weights import check_weights


class VectorFileError(FileFormatError):
    """A golden-vector case file is not one `nonlocal_core.vectors` writes: corrupted,
    truncated or foreign."""


_CASE_KEYS = ("spec_version", "name", "description", "config", "training")
_GROUPS = {
    "inputs": {"x": "float64", "context": "float64", "key_mask": "bool"},
    "expected": {"z": "float64", "attention": "float64"},
}
_OPTIONAL_INPUTS = ("context", "key_mask")  # null when the case has none
_TENSOR = '{"shape": [...], "dtype": "float64" | "bool", "data": [...]}'


def _brief(value: Any) -> str:
    return brief(value, limit=60)


def _array(tensor: Any, where: str, dtype: str) -> np.ndarray:
    """One tensor record as an array, every field checked (`VectorFileError` naming `where`)."""
    if not isinstance(tensor, dict) or sorted(tensor) != ["data", "dtype", "shape"]:
        raise VectorFileError(f"{where} is {_brief(tensor)}: expected a tensor {_TENSOR}")
    shape, data = tensor["shape"], tensor["data"]
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise VectorFileError(
            f"{where} has shape {_brief(shape)}: expected a list of integers >= 0"
        )
    if tensor["dtype"] != dtype:
        raise VectorFileError(f"{where} has dtype {_brief(tensor['dtype'])}: expected {dtype!r}")
    if not isinstance(data, list) or len(data) != math.prod(shape):
        count = f"{len(data)} values" if isinstance(data, list) else _brief(data)
        raise VectorFileError(
            f"{where} has data of {count}: expected a flat list of {math.prod(shape)} values "
            f"(shape {shape})"
        )
    kinds = (bool,) if dtype == "bool" else (int, float)
    bad = next((i for i, v in enumerate(data) if type(v) not in kinds), None)
    if bad is not None:
        what = "true or false" if dtype == "bool" else "numbers"
        raise VectorFileError(
            f"{where} has the data entry {_brief(data[bad])} at {bad}: expected {what}"
        )
    try:
        array = np.asarray(data, dtype=np.bool_ if dtype == "bool" else np.float64)
        array = array.reshape(shape)
    except (OverflowError, ValueError) as exc:  # an integer beyond float64, > 64 dimensions
        raise VectorFileError(f"{where} cannot be read as a {dtype} array: {exc}") from None
    if dtype != "bool" and not np.isfinite(array).all():
        raise VectorFileError(f"{where} has non-finite values: expected finite float64 numbers")
    return array


def _parse_case(raw: Any) -> dict:
    """A decoded case file as arrays and a config, checked (`VectorFileError` otherwise)."""
    if not isinstance(raw, dict):
        raise VectorFileError(f"the document is {_brief(raw)}: expected a JSON object")
    required = [*_CASE_KEYS, "inputs", "weights", "expected"]
    missing, unknown = sorted(set(required) - set(raw)), sorted(set(raw) - set(required))
    if missing or unknown:
        raise VectorFileError(
            f"keys missing {missing}, unknown {unknown}: expected exactly the keys {required}"
        )
    if not is_compatible_version(raw["spec_version"]):
        raise VectorFileError(
            f"spec_version is {_brief(raw['spec_version'])}: expected a {SPEC_MAJOR}.x vector"
        )
    for key in ("name", "description"):
        if not isinstance(raw[key], str):
            raise VectorFileError(f"{key} is {_brief(raw[key])}: expected a string")
    if not isinstance(raw["training"], bool):
        raise VectorFileError(f"training is {_brief(raw['training'])}: expected true or false")
    try:
        config = NonLocalConfig.from_dict(raw["config"])
    except (TypeError, ValueError) as exc:
        raise VectorFileError(f"config is invalid: {exc}") from None
    case = {**raw, "config": config}
    for group in ("inputs", "weights", "expected"):
        tensors, dtypes = raw[group], _GROUPS.get(group)
        if not isinstance(tensors, dict) or (dtypes and sorted(tensors) != sorted(dtypes)):
            keys = f"exactly {list(dtypes)}" if dtypes else "canonical weight names"
            raise VectorFileError(
                f"{group} is {_brief(tensors)}: expected an object with {keys}, each a tensor"
            )
        case[group] = {
            key: None
            if value is None and key in _OPTIONAL_INPUTS and group == "inputs"
            else _array(value, f"{group}.{key}", (dtypes or {}).get(key, "float64"))
            for key, value in tensors.items()
        }
    inputs, expected = case["inputs"], case["expected"]
    try:
        check_weights(case["weights"], config)
        shapes = check_shapes(
            config,
            inputs["x"].shape,
            None if inputs["context"] is None else inputs["context"].shape,
            None if inputs["key_mask"] is None else inputs["key_mask"].shape,
        )
    except ValueError as exc:  # WeightError, InputError
        raise VectorFileError(f"the arrays do not fit the config: {exc}") from None
    wanted = {
        "z": inputs["x"].shape,
        "attention": (shapes.batch, shapes.num_queries, shapes.num_keys),
    }
    for key, shape in wanted.items():
        if expected[key].shape != shape:
            raise VectorFileError(
                f"expected.{key} has shape {list(expected[key].shape)}: expected {list(shape)} "
                "for these inputs and config"
            )
    return case


def load_case(path: str | Path) -> dict:
    """Read one case file back into NumPy arrays (``None`` for absent inputs).

    Reading never trusts the file: one that is not UTF-8 JSON of a case, holds a tensor whose
    data does not fit its shape or dtype, a config with unknown or invalid fields, or arrays
    that do not fit that config raises `VectorFileError` (a ValueError) naming the file and
    what is wrong; a file that cannot be opened stays an `OSError` (`FileNotFoundError`...).

    Example:
        >>> from nonlocal_core.vectors import DEFAULT_DIR
        >>> case = load_case(DEFAULT_DIR / "embedded_2d.json")
        >>> case["inputs"]["x"].shape, case["config"].in_channels
        ((2, 4, 3, 4), 4)
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "case.json"
        >>> _ = path.write_text('{"spec_version": "1.0"')
        >>> load_case(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        nonlocal_core.vector_files.VectorFileError: '...case.json' is not JSON: ...
    """
    name = repr(str(path))
    try:
        text = Path(path).read_bytes().decode("utf-8")
        raw = json.loads(text)
    except UnicodeDecodeError as exc:
        raise VectorFileError(f"{name} is not UTF-8 text: {exc}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError; too many digits or levels
        raise VectorFileError(
            f"{name} is not JSON: {type(exc).__name__}: {exc} (truncated, corrupted or another "
            "format); expected a case file written by python -m nonlocal_core.vectors"
        ) from None
    try:
        return _parse_case(raw)
    except VectorFileError as exc:
        raise VectorFileError(f"{name}: {exc}") from None


def load_index(directory: str | Path) -> list[str]:
    """The case file names listed in ``directory/index.json``, checked: a JSON object of this
    spec's major version whose ``cases`` each name a ``.json`` file in `directory`.

    Example:
        >>> from nonlocal_core.vectors import DEFAULT_DIR
        >>> load_index(DEFAULT_DIR)[0]
        'embedded_2d.json'
    """
    path = Path(directory) / "index.json"
    name = repr(str(path))
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise VectorFileError(f"{name} is not UTF-8 JSON: {exc}") from None
    cases = raw.get("cases") if isinstance(raw, dict) else None
    if not isinstance(cases, list):
        raise VectorFileError(
            f'{name} holds {_brief(raw)}: expected {{"spec_version": ..., "cases": [...]}}'
        )
    if not is_compatible_version(raw.get("spec_version")):
        raise VectorFileError(
            f"{name}: spec_version is {_brief(raw.get('spec_version'))}: expected {SPEC_MAJOR}.x"
        )
    files = []
    for i, entry in enumerate(cases):
        file = entry.get("file") if isinstance(entry, dict) else None
        # A bare file name: an index must not point outside its own folder.
        if not isinstance(file, str) or Path(file).name != file or not file.endswith(".json"):
            raise VectorFileError(
                f"{name}: cases[{i}] is {_brief(entry)}: expected an object whose 'file' is "
                "the name of a .json file in the same folder"
            )
        files.append(file)
    return files
