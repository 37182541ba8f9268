"""`AttentionMaps`: the framework-free mapping both backends' ``capture_attention`` fill.

A backend subclasses it with `convert` (PyTorch: detach; Keras: to NumPy); `attached` sets
the blocks' sinks, which hand each call's (B, N, N') attention to `store`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

KEEP = ("last", "all")


def check_keep(keep: object) -> str:
    """`keep` if it is ``"last"`` or ``"all"``, else a ValueError naming it.

    Example:
        >>> check_keep("all")
        'all'
    """
    if keep not in KEEP:
        raise ValueError(
            f"keep={keep!r} is invalid: expected 'last' (each block's last call) or 'all' "
            "(a list of every call's)"
        )
    return keep


class AttentionMaps(Mapping):
    """Block path -> the attention a_ij, ``(B, N, N')``, of the block there.

    A read-only mapping filled as the blocks run: by default each value is the block's last
    call's matrix; with ``keep="all"`` it is the list of every call's, oldest first. Blocks
    that have not run are absent. `paths` lists every block the capture watches.

    Example:
        >>> import numpy as np
        >>> maps = AttentionMaps(("a", "b"), "last")
        >>> maps.store("a", np.ones((1, 4, 2)))
        >>> dict(maps)["a"].shape, len(maps), maps
        ((1, 4, 2), 1, AttentionMaps({'a': (1, 4, 2)}))
    """

    def __init__(self, paths: tuple[str, ...], keep: str) -> None:
        self.paths = paths
        self.keep = check_keep(keep)
        self._maps: dict[str, Any] = {}

    def convert(self, path: str, attention: Any) -> Any:
        """The value kept for one call's attention (a backend's subclass converts it)."""
        return attention

    def store(self, path: str, attention: Any) -> None:
        """Keep the attention of one call of the block at `path`."""
        value = self.convert(path, attention)
        if self.keep == "last":
            self._maps[path] = value
        else:
            self._maps.setdefault(path, []).append(value)

    def __getitem__(self, path: str) -> Any:
        try:
            return self._maps[path]
        except KeyError:
            ran = sorted(self._maps) or "none yet"
            raise KeyError(
                f"no attention for {path!r}: the blocks watched are {list(self.paths)}, and "
                f"those that have run are {ran}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._maps)

    def __len__(self) -> int:
        return len(self._maps)

    def __repr__(self) -> str:
        shapes = {
            path: f"{len(value)} calls" if isinstance(value, list) else tuple(value.shape)
            for path, value in self._maps.items()
        }
        return f"{type(self).__name__}({shapes})"


_UNSET = object()


@contextlib.contextmanager
def attached(maps: AttentionMaps, blocks: list[tuple[str, Any]]) -> Iterator[AttentionMaps]:
    """Give every block of `blocks` ((path, block) pairs) a sink filling `maps` while open.

    A backend's block calls its ``_attention_sink`` with each call's attention. A block
    already watched by an enclosing capture passes its attention on to that one too; on
    exit, even by an exception, every block's sink is as it was (absent from the instance
    if it was absent).

    Example:
        >>> import numpy as np
        >>> class Block:
        ...     _attention_sink = None
        ...     def __call__(self):
        ...         if self._attention_sink is not None:
        ...             self._attention_sink(np.ones((1, 2, 2)))
        >>> block = Block()
        >>> with attached(AttentionMaps(("b",), "last"), [("b", block)]) as maps:
        ...     block()
        >>> maps["b"].shape, "_attention_sink" in vars(block)
        ((1, 2, 2), False)
    """
    saved = [(block, vars(block).get("_attention_sink", _UNSET)) for _, block in blocks]
    try:
        for path, block in blocks:
            block._attention_sink = _Sink(maps, path, block._attention_sink)
        yield maps
    finally:
        for block, previous in reversed(saved):
            if previous is _UNSET:
                vars(block).pop("_attention_sink", None)
            else:
                block._attention_sink = previous


class _Sink:
    """Stores one block's attention in `maps` under `path`, then passes it on to the sink of
    an enclosing capture, if any."""

    def __init__(self, maps: AttentionMaps, path: str, previous: Any) -> None:
        self.maps, self.path, self.previous = maps, path, previous

    def __call__(self, attention: Any) -> None:
        self.maps.store(self.path, attention)
        if self.previous is not None:
            self.previous(attention)
