"""Dtypes under test: rounding NumPy arrays into them, and their unit roundoffs.

The suite rounds every input and weight to the dtype under test *before* handing it to an
adapter, and the float64 reference then runs on those rounded values, so the comparison
measures only the implementation's own rounding. NumPy has no bfloat16: bfloat16 values are
carried in float32 arrays (every bfloat16 number is exactly a float32 number).

Example:
    >>> import numpy as np
    >>> cast(np.array([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8]), "bfloat16").tolist()  # ties to even
    [1.0, 1.015625]
    >>> unit_roundoff("float32") == 2.0**-24
    True
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# u = 2^-p for a format with p significand bits (round to nearest): the largest relative error
# of one rounding. tfloat32 is the 10-bit-mantissa format GPU tensor cores read float32 in.
UNIT_ROUNDOFF = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "tfloat32": 2.0**-11,
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
}

# The smallest positive normal number of each format: below it results are subnormal, or
# flushed to zero on hardware that flushes (GPUs, CPUs in FTZ/DAZ mode), an absolute error
# of at most this much.
SMALLEST_NORMAL = {
    "float64": 2.0**-1022,
    "float32": 2.0**-126,
    "tfloat32": 2.0**-126,
    "float16": 2.0**-14,
    "bfloat16": 2.0**-126,
}

# The NumPy dtype an array of each dtype under test travels in.
CARRIER = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": np.float32,
}


def unit_roundoff(dtype: str) -> float:
    """u for a dtype name; unknown names raise ``ValueError`` listing the known ones.

    Example:
        >>> unit_roundoff("bfloat16")
        0.00390625
    """
    try:
        return UNIT_ROUNDOFF[dtype]
    except KeyError:
        raise ValueError(
            f"dtype={dtype!r} is unknown: expected one of {sorted(UNIT_ROUNDOFF)}"
        ) from None


def round_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """Round to the nearest bfloat16 (ties to even), returned as float32.

    Goes through float32 first (round to nearest), then keeps the top 16 bits of each
    float32 with round-to-nearest-even on the dropped 16. Infinities and NaNs stay so.

    Example:
        >>> round_to_bfloat16(np.array([3.140625, 1.0 + 2.0**-8])).tolist()
        [3.140625, 1.0]
    """
    f32 = np.ascontiguousarray(values, dtype=np.float32)
    bits = f32.view(np.uint32).astype(np.uint64)
    # Adding 0x7FFF plus the lowest kept bit rounds half to even when the low half is cut.
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    out = rounded.astype(np.uint32).view(np.float32)
    return np.where(np.isfinite(f32), out, f32)


def cast(values: np.ndarray, dtype: str) -> np.ndarray:
    """`values` rounded to `dtype`, in that dtype's carrier array (see `CARRIER`).

    Example:
        >>> cast(np.array([0.1]), "float16").dtype
        dtype('float16')
    """
    unit_roundoff(dtype)
    array = np.asarray(values)
    if array.dtype == np.bool_:
        return array
    if dtype == "bfloat16":
        return round_to_bfloat16(array)
    return array.astype(CARRIER[dtype])


@dataclasses.dataclass(frozen=True)
class Precision:
    """How an implementation rounds, which the tolerance model needs (spec/conformance.md).

    Attributes:
        storage: the dtype every tensor between two operations is stored in (the dtype
            under test).
        matmul_inputs: the format matrix products read their operands in: ``"tfloat32"``
            when float32 matmuls run on TF32 tensor cores, else the storage dtype.
        accumulation: the dtype sums (matmuls, softmax denominators, BN statistics)
            accumulate in. Unknown: assume the storage dtype (the conservative choice).

    Example:
        >>> p = Precision("bfloat16", "bfloat16", "float32")
        >>> p.u_storage, p.u_accumulation == 2.0**-24
        (0.00390625, True)
    """

    storage: str
    matmul_inputs: str
    accumulation: str

    @classmethod
    def default(cls, dtype: str) -> Precision:
        """Everything in `dtype`: the conservative model for an adapter that says nothing.

        Example:
            >>> Precision.default("float16").accumulation
            'float16'
        """
        return cls(dtype, dtype, dtype)

    def __post_init__(self) -> None:
        for field in ("storage", "matmul_inputs", "accumulation"):
            unit_roundoff(getattr(self, field))

    @property
    def u_storage(self) -> float:
        """u of the storage dtype: one rounding of a stored result."""
        return unit_roundoff(self.storage)

    @property
    def tiny(self) -> float:
        """The smallest normal number of the storage dtype (the underflow error)."""
        return SMALLEST_NORMAL[self.storage]

    @property
    def u_matmul_inputs(self) -> float:
        """Extra relative error of rounding a matmul operand (0 unless coarser than storage)."""
        u = unit_roundoff(self.matmul_inputs)
        return u if u > self.u_storage else 0.0

    @property
    def u_accumulation(self) -> float:
        """u of the accumulator; never finer than float64's for our float64 reference."""
        return unit_roundoff(self.accumulation)

    def gamma(self, k: int) -> float:
        """Higham's gamma_k = k u / (1 - k u): the bound on a k-term sum's relative error.

        Infinite once k u >= 1 (no bound then).

        Example:
            >>> Precision.default("float64").gamma(0)
            0.0
        """
        ku = k * self.u_accumulation
        return ku / (1.0 - ku) if ku < 1.0 else math.inf

    def describe(self) -> dict[str, str]:
        """The settings for the report header."""
        return dataclasses.asdict(self)
