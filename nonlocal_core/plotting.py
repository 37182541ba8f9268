"""Attention maps over images and video frames: what one query position attends to.

A block's attention a_ij is a ``(N, N')`` matrix per batch item: row i is the query at grid
position i of x (the query grid S, ``N = prod(S)``), column j the key at position j of the
pooled key grid S' (``N' = prod(S')``, ``S'_d = S_d // w_d`` for pooling windows w).
`attention_overlay` lays one row out on the key grid and upsamples it, nearest neighbour,
to the pixels of an image or of one video frame; `plot_attention` draws it over the image
and marks the query. Both take NumPy arrays (or anything ``np.asarray`` reads: a CPU
tensor after ``.detach()``) and import no framework; matplotlib, an optional dependency
(``pip install matplotlib``), is imported when `plot_attention` is called.

Example:
    >>> import numpy as np
    >>> attention = np.full((16, 4), 0.25)  # 4x4 queries, keys pooled 2x2 to 2x2
    >>> attention_overlay(attention, (0, 0), key_grid=(2, 2), query_grid=(4, 4), size=(8, 8)).shape
    (8, 8)
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

_CHANNELS = (3, 4)  # RGB, RGBA: what imshow reads as colour


def _grid(value: Any, name: str) -> tuple[int, ...]:
    """A grid shape: a tuple of 2 (image) or 3 (video) positive ints."""
    try:
        grid = tuple(value)
    except TypeError:
        grid = None
    if (
        grid is None
        or len(grid) not in (2, 3)
        or not all(isinstance(e, numbers.Integral) and not isinstance(e, bool) for e in grid)
        or min(grid) < 1
    ):
        raise ValueError(
            f"{name} is {value!r}: expected a grid shape of 2 (H, W) or 3 (T, H, W) "
            "positive integers"
        )
    return tuple(int(e) for e in grid)


def _array(value: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError, RuntimeError) as exc:  # a tensor that requires grad, ...
        raise TypeError(
            f"{name} of type {type(value).__name__} cannot be read as a NumPy array ({exc}): "
            "pass a NumPy array (a torch tensor: .detach().cpu())"
        ) from None


def _query_index(query: Any, query_grid: tuple[int, ...]) -> tuple[int, ...]:
    """`query` as grid coordinates, from coordinates or a flat (row-major) index."""
    n = int(np.prod(query_grid))
    if isinstance(query, numbers.Integral) and not isinstance(query, bool):
        if not 0 <= query < n:
            raise ValueError(
                f"query is {query}: expected a flat index 0 <= query < {n} "
                f"(query_grid {query_grid}) or a tuple of grid coordinates"
            )
        return tuple(int(i) for i in np.unravel_index(int(query), query_grid))
    coords = tuple(query) if isinstance(query, (tuple, list, np.ndarray)) else None
    if (
        coords is None
        or len(coords) != len(query_grid)
        or not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in coords)
        or not all(0 <= c < e for c, e in zip(coords, query_grid))
    ):
        raise ValueError(
            f"query is {query!r}: expected {len(query_grid)} integer coordinates inside "
            f"query_grid {query_grid}, or a flat index 0 <= query < {n}"
        )
    return tuple(int(c) for c in coords)


def _windows(key_grid: tuple[int, ...], query_grid: tuple[int, ...]) -> tuple[int, ...]:
    """The pooling windows w with key_grid = query_grid // w, read off the two grids."""
    if len(key_grid) != len(query_grid) or any(k > q for k, q in zip(key_grid, query_grid)):
        raise ValueError(
            f"key_grid {key_grid} is not a pooling of query_grid {query_grid}: expected "
            "one extent per query axis, each at most the query grid's"
        )
    windows = tuple(q // k for q, k in zip(query_grid, key_grid))
    if any(q // w != k for q, w, k in zip(query_grid, windows, key_grid)):
        raise ValueError(
            f"key_grid {key_grid} is not a pooling of query_grid {query_grid}: expected "
            "extents query_grid[d] // w[d] for whole windows w (floor pooling)"
        )
    return windows


def _query_frame(q: tuple[int, ...], query_grid: tuple[int, ...], frames: int) -> int:
    """The video frame at the middle of the query's time step."""
    return min(frames - 1, (2 * q[0] + 1) * frames // (2 * query_grid[0]))


def _axis_map(pixels: int, queries: int, window: int, keys: int) -> np.ndarray:
    """For each pixel along an axis, its key cell (-1: dropped by floor pooling)."""
    cell = np.arange(pixels) * queries // pixels // window
    return np.where(cell < keys, cell, -1)


def attention_overlay(
    attention: Any,
    query: Any,
    *,
    key_grid: Any,
    query_grid: Any,
    size: Any,
    frame: int | None = None,
) -> np.ndarray:
    """One query's attention over the keys, upsampled to an image of `size` pixels.

    Args:
        attention: ``(N, N')`` (one batch item; row `query` is used) or one row ``(N',)``.
        query: the query position: grid coordinates or a flat index into `query_grid`.
        key_grid: S', the pooled key grid (e.g. ``(4, 4)`` for 8x8 queries pooled 2x2, or
            ``(T', H', W')`` for video); ``N' = prod(key_grid)``.
        query_grid: S, the query grid (``N = prod(query_grid)``); key cell k covers query
            cells ``k * w`` to ``k * w + w - 1`` with windows ``w = S // S'``.
        size: the image's ``(H, W)``, or a video's ``(T, H, W)`` (frames of the video
            spread evenly over the T query steps, as pixels over the H and W query cells).
        frame: for video, the frame shown (default: the query's frame).

    Returns:
        ``(H, W)`` float array: each pixel holds the weight of the key cell covering it in
        the shown frame; NaN where floor pooling left no key.

    Example:
        >>> attention = np.zeros((16, 4))
        >>> attention[5, 3] = 1.0  # query (1, 1) attends to the bottom-right key
        >>> attention_overlay(attention, (1, 1), key_grid=(2, 2), query_grid=(4, 4), size=(4, 4))
        array([[0., 0., 0., 0.],
               [0., 0., 0., 0.],
               [0., 0., 1., 1.],
               [0., 0., 1., 1.]])
    """
    key_grid = _grid(key_grid, "key_grid")
    query_grid = _grid(query_grid, "query_grid")
    size = _grid(size, "size")
    windows = _windows(key_grid, query_grid)
    if len(size) != len(query_grid):
        raise ValueError(
            f"size is {size}: expected {len(query_grid)} extents, like query_grid {query_grid}"
        )
    q = _query_index(query, query_grid)
    attention = _array(attention, "attention")
    n, n_keys = int(np.prod(query_grid)), int(np.prod(key_grid))
    if attention.shape == (n, n_keys):
        row = attention[int(np.ravel_multi_index(q, query_grid))]
    elif attention.shape == (n_keys,):
        row = attention
    else:
        raise ValueError(
            f"attention has shape {attention.shape}: expected (N, N') = ({n}, {n_keys}) for "
            f"query_grid {query_grid} and key_grid {key_grid} (one batch item: attention[b]), "
            f"or one row ({n_keys},)"
        )
    keys = row.reshape(key_grid)
    if len(size) == 3:
        frames = size[0]
        if frame is None:
            frame = _query_frame(q, query_grid, frames)
        if not isinstance(frame, numbers.Integral) or isinstance(frame, bool):
            raise ValueError(f"frame is {frame!r}: expected a frame index 0 <= frame < {frames}")
        if not 0 <= frame < frames:
            raise ValueError(f"frame is {frame}: expected a frame index 0 <= frame < {frames}")
        t = _axis_map(frames, query_grid[0], windows[0], key_grid[0])[frame]
        keys = keys[t] if t >= 0 else np.full(key_grid[1:], np.nan)
    elif frame is not None:
        raise ValueError(f"frame is {frame!r}: expected None for an image (size {size})")
    rows = _axis_map(size[-2], query_grid[-2], windows[-2], key_grid[-2])
    cols = _axis_map(size[-1], query_grid[-1], windows[-1], key_grid[-1])
    out = keys[np.ix_(np.maximum(rows, 0), np.maximum(cols, 0))]
    out[(rows < 0)[:, None] | (cols < 0)[None, :]] = np.nan
    return out


def _frame_of(image: np.ndarray, video: bool) -> tuple[tuple[int, ...], bool]:
    """The image's spatial size (T, H, W or H, W) and whether it has a colour axis."""
    rank = 3 if video else 2
    colour = image.ndim == rank + 1 and image.shape[-1] in _CHANNELS
    if image.ndim != rank + colour:
        wanted = "(T, H, W) or (T, H, W, 3|4)" if video else "(H, W) or (H, W, 3|4)"
        raise ValueError(
            f"image has shape {image.shape}: expected {wanted}, channels last "
            f"(a channels-first array: np.moveaxis(image, 0, -1))"
        )
    return image.shape[:rank], colour


def _top(overlay: np.ndarray) -> float:
    """The largest weight of `overlay` (NaN: no key), kept above 0 for a valid colour scale."""
    finite = overlay[np.isfinite(overlay)]
    return max(float(finite.max()) if finite.size else 0.0, 1e-12)


def plot_attention(
    attention: Any,
    image: Any,
    query: Any,
    *,
    key_grid: Any,
    query_grid: Any = None,
    frame: int | None = None,
    ax: Any = None,
    cmap: str = "inferno",
    alpha: float = 0.6,
    vmax: float | None = None,
    colorbar: bool = True,
    title: str | None = None,
) -> Any:
    """Draw one query's attention over an image (or a video frame) and mark the query.

    The weights of the key grid are upsampled to the image (`attention_overlay`) and drawn
    with `alpha` over it; a cyan cross marks the query (hollow circle: the query lies in
    another frame of a video). Returns the matplotlib ``Axes`` (a new figure's unless `ax`).

    Args:
        attention: ``(N, N')`` for one batch item, or the query's row ``(N',)``.
        image: ``(H, W)`` or ``(H, W, 3|4)``, channels last; a video ``(T, H, W[, 3|4])``.
            uint8 is read as 0..255; other RGB outside [0, 1] is rescaled to it for display.
        query: grid coordinates, e.g. ``(y, x)`` or ``(t, y, x)``, or a flat index.
        key_grid: S', the pooled key grid, e.g. ``(4, 4)`` for 8x8 pooled 2x2.
        query_grid: S (default: the image's own ``(H, W)`` or ``(T, H, W)``).
        frame: for video, the frame drawn (default: the query's).
        vmax: the weight at the top of the colour scale, which starts at 0 (default: the
            largest weight drawn); a common `vmax` makes several panels comparable.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> rng = np.random.default_rng(0)
        >>> image = rng.uniform(size=(8, 8, 3))
        >>> attention = rng.dirichlet(np.ones(16), size=64)  # 8x8 queries, 4x4 keys
        >>> ax = plot_attention(attention, image, (2, 5), key_grid=(4, 4))
        >>> ax.images[-1].get_array().shape  # the overlay, on the image's pixels
        (8, 8)
    """
    eight_bit = getattr(image, "dtype", None) == np.uint8
    image = _array(image, "image") / (255 if eight_bit else 1)
    key_grid = _grid(key_grid, "key_grid")
    size, colour = _frame_of(image, video=len(key_grid) == 3)
    query_grid = size if query_grid is None else _grid(query_grid, "query_grid")
    overlay = attention_overlay(
        attention, query, key_grid=key_grid, query_grid=query_grid, size=size, frame=frame
    )
    q = _query_index(query, query_grid)
    picture = image
    if len(size) == 3:
        if frame is None:
            frame = _query_frame(q, query_grid, size[0])
        picture = image[frame]
    if colour and (picture.min() < 0 or picture.max() > 1):
        # imshow clips float RGB to [0, 1] with a warning; a rescale keeps the contrast.
        picture = (picture - picture.min()) / max(picture.max() - picture.min(), 1e-12)
    if ax is None:
        import matplotlib.pyplot as plt  # an optional dependency; pyplot only for a new figure

        _, ax = plt.subplots(figsize=(4, 4))
    height, width = size[-2:]
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    ax.imshow(picture, cmap=None if colour else "gray", extent=extent, interpolation="nearest")
    shown = ax.imshow(
        overlay,
        cmap=cmap,
        alpha=alpha,
        extent=extent,
        interpolation="nearest",
        vmin=0.0,
        vmax=_top(overlay) if vmax is None else vmax,
    )
    # The query cell's centre in pixels (query and image grids may differ in resolution).
    y = (q[-2] + 0.5) * height / query_grid[-2] - 0.5
    x = (q[-1] + 0.5) * width / query_grid[-1] - 0.5
    same_frame = len(size) == 2 or frame * query_grid[0] // size[0] == q[0]
    if same_frame:
        ax.plot(x, y, marker="X", markersize=11, color="cyan", markeredgecolor="black")
    else:
        ax.plot(x, y, marker="o", markersize=11, fillstyle="none", color="cyan")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title if title is not None else f"query {q}")
    if colorbar:
        ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    return ax
