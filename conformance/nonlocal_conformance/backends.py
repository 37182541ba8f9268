"""Finding the implementation under test: built-in names, ``module:Class``, entry points.

Example:
    >>> adapter = load_adapter("numpy")
    >>> adapter.name
    'numpy'
    >>> load_adapter("nope")
    Traceback (most recent call last):
    ...
    nonlocal_conformance.backends.BackendError: unknown backend 'nope': ...
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib import metadata
from typing import Any

from .adapter import Adapter

ENV_VAR = "NONLOCAL_BACKEND"
ENTRY_POINT_GROUP = "nonlocal_conformance.backends"

_TORCH = "nonlocal_torch.conformance:TorchAdapter"
_KERAS = "nonlocal_keras.conformance:KerasAdapter"

# name -> (adapter "module:Class", Keras backend to select first or None, pip extra)
BUILTIN: dict[str, tuple[str, str | None, str]] = {
    "numpy": ("nonlocal_conformance.numpy_adapter:NumpyAdapter", None, ""),
    "torch": (_TORCH, None, "torch"),
    "keras": (_KERAS, None, "keras"),
    "keras-tensorflow": (_KERAS, "tensorflow", "tensorflow"),
    "keras-jax": (_KERAS, "jax", "jax"),
    "keras-torch": (_KERAS, "torch", "torch,keras"),
    # Published implementations (nonlocal_conformance.published): their real modules.
    "mmcv": ("nonlocal_conformance.published.mmcv:MmcvAdapter", None, "mmcv"),
    "pytorchvideo": (
        "nonlocal_conformance.published.pytorchvideo:PyTorchVideoAdapter",
        None,
        "pytorchvideo",
    ),
}


class BackendError(Exception):
    """The requested backend cannot be loaded; the message says why and what to do."""


def known_backends() -> dict[str, str]:
    """Every name ``--backend`` accepts, built-in and entry points, with its target.

    Example:
        >>> known_backends()["torch"]
        'nonlocal_torch.conformance:TorchAdapter'
    """
    names = {name: target for name, (target, _, _) in BUILTIN.items()}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        names.setdefault(ep.name, ep.value)
    return names


def select_keras_backend(wanted: str) -> None:
    """Make `wanted` the Keras backend, or refuse if Keras already runs another.

    Keras reads ``KERAS_BACKEND`` once, when it is first imported.
    """
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != wanted:
            raise BackendError(
                f"backend 'keras-{wanted}' needs Keras on {wanted!r}, but Keras was already "
                f"imported in this process with backend {current!r}: Keras reads KERAS_BACKEND "
                "once, so run this backend in a fresh process (one pytest run per Keras backend)"
            )
        return
    os.environ["KERAS_BACKEND"] = wanted


def _import_target(target: str, name: str, extra: str) -> Any:
    module_name, _, class_name = target.partition(":")
    if not module_name or not class_name:
        raise BackendError(
            f"backend {name!r}: {target!r} is not of the form 'package.module:AdapterClass'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f" (pip install 'nonlocal-block[{extra}]')" if extra else ""
        raise BackendError(
            f"backend {name!r} needs module {module_name!r}, which could not be imported: "
            f"{exc}{hint}"
        ) from exc
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise BackendError(
            f"backend {name!r}: module {module_name!r} has no attribute {class_name!r}"
        ) from None


def load_adapter(name: str) -> Adapter:
    """An adapter instance for a built-in name, an entry-point name or ``module:Class``.

    Raises `BackendError` (one clear message) when the name is unknown, the module is not
    installed, or the object does not implement `Adapter`.
    """
    if not name:
        raise BackendError(
            f"no backend given: pass --backend=NAME or set {ENV_VAR}; known backends: "
            f"{', '.join(known_backends())}, or 'package.module:AdapterClass'"
        )
    extra = ""
    if name in BUILTIN:
        target, keras_backend, extra = BUILTIN[name]
        if keras_backend is not None:
            select_keras_backend(keras_backend)
    elif ":" in name:
        target = name
    else:
        target = known_backends().get(name)
        if target is None:
            raise BackendError(
                f"unknown backend {name!r}: expected one of {', '.join(known_backends())}, "
                f"a name registered in the {ENTRY_POINT_GROUP!r} entry-point group, or "
                "'package.module:AdapterClass'"
            )
    cls = _import_target(target, name, extra)
    try:
        adapter = cls()
    except Exception as exc:
        raise BackendError(f"backend {name!r}: {target}() failed: {exc!r}") from exc
    if not isinstance(adapter, Adapter):
        missing = [
            m
            for m in ("name", "capabilities", "versions", "build", "forward", "export_weights")
            if not hasattr(adapter, m)
        ]
        raise BackendError(
            f"backend {name!r}: {target} does not implement nonlocal_conformance.adapter."
            f"Adapter (missing: {', '.join(missing) or 'gradients'})"
        )
    return adapter
