"""The execution strategies every backend offers for the pairwise step, by instantiation.

Framework-free names only: each backend (``nonlocal_torch.strategies``,
``nonlocal_keras.strategies``) implements them and chooses among them for ``"auto"``. They
all compute the spec's function; they differ in time and memory.
"""

from __future__ import annotations

STRATEGIES = ("auto", "sdpa", "chunked", "associative", "sorted", "pairwise")
ALLOWED_STRATEGIES = {
    "embedded_gaussian": ("auto", "sdpa", "chunked", "pairwise"),
    "gaussian": ("auto", "sdpa", "chunked", "pairwise"),
    "dot_product": ("auto", "associative", "pairwise"),
    "concatenation": ("auto", "sorted", "pairwise"),
}


def check_strategy(strategy: object, instantiation: str) -> str:
    """`strategy`, if it is one `instantiation` can run; a ValueError naming the options if not.

    Example:
        >>> check_strategy("sorted", "concatenation")
        'sorted'
        >>> check_strategy("sorted", "dot_product")
        Traceback (most recent call last):
        ...
        ValueError: strategy='sorted' is invalid for dot_product: expected one of ('auto', 'associative', 'pairwise')
    """  # noqa: E501
    allowed = ALLOWED_STRATEGIES[instantiation]
    if not isinstance(strategy, str) or strategy not in allowed:
        raise ValueError(
            f"strategy={strategy!r} is invalid for {instantiation}: expected one of {allowed}"
        )
    return strategy
