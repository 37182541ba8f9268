"""Conformance adapters for the published non-local blocks a package registry provides.

Each adapter wraps the *real* module of a published package - nothing is reimplemented -
behind the adapter protocol, so the suite measures that implementation:

- `nonlocal_conformance.published.mmcv:MmcvAdapter` (``--backend=mmcv``): mmcv's
  ``mmcv.cnn.NonLocal1d/2d/3d`` (also what mmaction2 and mmdet build);
- `nonlocal_conformance.published.pytorchvideo:PyTorchVideoAdapter`
  (``--backend=pytorchvideo``): PyTorchVideo's ``pytorchvideo.layers.nonlocal_net
  .create_nonlocal`` (the block of its SlowFast-family models).

Each declares, from the implementation's profile (`nonlocal_core.profiles`), exactly what the
module can express; a drawn config the capabilities cannot rule out but the module cannot
build (`nonlocal_core.profiles.source_kwargs` says why) is declined with
`nonlocal_conformance.adapter.Unsupported`. Weights travel through `nonlocal_core.convert`:
canonical weights become the module's own ``state_dict``, loaded with ``strict=True``.

Importing this package imports no framework: torch and the published package are imported
when an adapter is constructed.

Example:
    >>> sorted(ADAPTERS)
    ['mmcv', 'pytorchvideo']
"""

from __future__ import annotations

ADAPTERS = {
    "mmcv": "nonlocal_conformance.published.mmcv:MmcvAdapter",
    "pytorchvideo": "nonlocal_conformance.published.pytorchvideo:PyTorchVideoAdapter",
}

__all__ = ["ADAPTERS"]
