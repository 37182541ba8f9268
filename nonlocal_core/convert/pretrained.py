"""`load_block`: one block's config and canonical weights from any checkpoint - the common
part of the backends' ``NonLocalBlock.from_pretrained``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..config import NonLocalConfig
from ..io import load
from ..weights import Weights, host_values
from .readers import find_state_dict, read_checkpoint
from .scan import FoundBlock, find_blocks
from .state_dicts import CheckpointError


def block_state(block: Any) -> tuple[NonLocalConfig, Weights]:
    """The config and canonical weights (as host NumPy arrays) of a block of any backend:
    anything with a `NonLocalConfig` in ``.config`` or ``.nonlocal_config`` and a
    ``canonical_weights()`` method.

    Example:
        >>> from nonlocal_core import NonLocalConfig, init_weights
        >>> class Block:
        ...     config = NonLocalConfig(4)
        ...     def canonical_weights(self):
        ...         return init_weights(self.config)
        >>> config, weights = block_state(Block())
        >>> config.in_channels, weights["g.weight"].shape
        (4, (2, 4))
    """
    config = getattr(block, "nonlocal_config", None) or getattr(block, "config", None)
    if not isinstance(config, NonLocalConfig) or not callable(
        getattr(block, "canonical_weights", None)
    ):
        raise TypeError(
            f"block must be a non-local block of some backend (with a NonLocalConfig and "
            f"canonical_weights()), got {type(block).__name__}"
        )
    weights = {
        name: np.asarray(host_values(value)) for name, value in block.canonical_weights().items()
    }
    return config, weights


def load_block(
    checkpoint: Any, source: str | None = None, block: str | None = None, **arguments: Any
) -> FoundBlock:
    """The one non-local block in `checkpoint`, converted from `source`'s layout.

    `checkpoint` is a state dict (a mapping from names to arrays or tensors) or a file:
    with ``source=None``, a canonical file written by `nonlocal_core.save`; otherwise any
    checkpoint `read_checkpoint` opens (PyTorch, Caffe2 pickle, safetensors, ``.npz``),
    of one block or a whole network. `block` picks one block by module path when the
    checkpoint holds several; `arguments` are `source`'s own constructor arguments for
    what the weights cannot tell (see `find_blocks`).

    Example:
        >>> from nonlocal_core import init_weights, profile
        >>> from nonlocal_core.convert import to_state_dict
        >>> cfg = profile("alexhex7", in_channels=8, instantiation="dot_product", spatial_dims=2)
        >>> state = to_state_dict(init_weights(cfg), "alexhex7", cfg, prefix="layer3.nl.")
        >>> found = load_block(state, "alexhex7", instantiation="dot_product")
        >>> found.prefix, found.config == cfg
        ('layer3.nl', True)
    """
    if isinstance(checkpoint, str | os.PathLike):
        if source is None:
            if block is not None or arguments:
                given = sorted(arguments) + (["block"] if block is not None else [])
                raise TypeError(
                    f"{given} given for a canonical file (source=None), whose config is in "
                    "the file: pass source=... for another implementation's checkpoint"
                )
            config, weights = load(checkpoint)
            return FoundBlock("", "paper", config, weights, {}, tuple(weights))
        state = find_state_dict(read_checkpoint(checkpoint))
        where = repr(os.fspath(checkpoint))
    elif isinstance(checkpoint, Mapping):
        if source is None:
            raise TypeError(
                "a state dict needs source=...: one of the published layouts "
                "('paper' for the canonical names)"
            )
        state, where = checkpoint, "the state dict"
    else:
        raise TypeError(
            f"checkpoint must be a state dict or a file path, got {type(checkpoint).__name__}"
        )
    everything = find_blocks(state, source, **arguments)
    found = everything if block is None else [b for b in everything if b.prefix == block]
    if len(found) == 1:
        return found[0]
    names = [b.prefix for b in everything]
    if not names:
        raise CheckpointError(f"{where} holds no {source} non-local block")
    if block is not None:
        raise CheckpointError(f"{where} has no {source} block {block!r}: it has {names}")
    raise CheckpointError(f"{where} holds {len(names)} {source} blocks {names}: pass block=...")
