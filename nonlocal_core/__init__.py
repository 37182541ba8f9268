"""nonlocal_core: the framework-free definition of the non-local block.

The config, the canonical weights, input-shape rules and the float64 NumPy reference that
every backend is judged against. Importing it needs only NumPy.

Example:
    >>> import numpy as np
    >>> from nonlocal_core import NonLocalConfig, init_weights, nonlocal_forward
    >>> cfg = NonLocalConfig(in_channels=8, spatial_dims=2)
    >>> x = np.ones((1, 8, 4, 4))
    >>> nonlocal_forward(x, init_weights(cfg), cfg).shape
    (1, 8, 4, 4)
"""

from .config import (
    DATA_FORMATS,
    DEFAULT_WINDOWS,
    INSTANTIATIONS,
    NORMS,
    POOL_POSITIONS,
    SPEC_VERSION,
    ConfigError,
    NonLocalConfig,
)
from .io import FileFormatError, load, save
from .profiles import SOURCES, ProfileError, profile
from .reference import nonlocal_forward
from .shapes import BlockShapes, InputError, check_shapes
from .weights import WeightError, check_weights, init_weights, random_weights, weight_shapes

__version__ = "0.1.0"

__all__ = [
    "DATA_FORMATS",
    "DEFAULT_WINDOWS",
    "INSTANTIATIONS",
    "NORMS",
    "POOL_POSITIONS",
    "SOURCES",
    "SPEC_VERSION",
    "BlockShapes",
    "ConfigError",
    "FileFormatError",
    "InputError",
    "NonLocalConfig",
    "ProfileError",
    "WeightError",
    "check_shapes",
    "check_weights",
    "init_weights",
    "load",
    "nonlocal_forward",
    "profile",
    "random_weights",
    "save",
    "weight_shapes",
]
