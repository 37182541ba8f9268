"""`nonlocal_core.convert`: weights of every published non-local implementation, in and out.

One block at a time, `from_state_dict` reads a state dict in a source's own names and
shapes into canonical weights, and `to_state_dict` writes canonical weights back in them,
bit for bit; `find_blocks` finds and converts every block of a whole network's checkpoint;
`read_checkpoint` opens checkpoint files (PyTorch, Caffe2 pickles, safetensors, ``.npz``)
without running any code in them. The config of a source's block comes from
`nonlocal_core.profile`. ``python -m nonlocal_core.convert`` does it all from the shell.

Example:
    >>> from nonlocal_core import init_weights, profile
    >>> cfg = profile("mmcv", in_channels=8, mode="dot_product", spatial_dims=2)
    >>> state = to_state_dict(init_weights(cfg), "mmcv", cfg)
    >>> sorted(state)[:2]
    ['conv_out.conv.bias', 'conv_out.conv.weight']
    >>> sorted(from_state_dict(state, "mmcv", cfg))[:2]
    ['g.bias', 'g.weight']
"""

from ..profiles import SOURCES, ProfileError
from .layouts import Entry, Layout, layout
from .readers import FileFormatError, UnsafeCheckpointError, find_state_dict, read_checkpoint
from .scan import FoundBlock, find_blocks
from .state_dicts import CheckpointError, from_state_dict, to_state_dict

__all__ = [
    "SOURCES",
    "CheckpointError",
    "Entry",
    "FileFormatError",
    "FoundBlock",
    "Layout",
    "ProfileError",
    "UnsafeCheckpointError",
    "find_blocks",
    "find_state_dict",
    "from_state_dict",
    "layout",
    "read_checkpoint",
    "to_state_dict",
]
