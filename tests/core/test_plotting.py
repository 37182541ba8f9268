"""nonlocal_core.plotting: the overlay puts each key's weight on the pixels that key pools,
the query is marked where it is, and wrong shapes are refused with the argument named."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from nonlocal_core.plotting import attention_overlay, plot_attention

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _one_hot_attention(query_grid, key_grid, query, key):
    """A (N, N') matrix whose row `query` puts all its weight on `key` (grid coordinates)."""
    n, m = int(np.prod(query_grid)), int(np.prod(key_grid))
    attention = np.zeros((n, m))
    attention[np.ravel_multi_index(query, query_grid), np.ravel_multi_index(key, key_grid)] = 1
    return attention


@pytest.mark.parametrize("key", [(0, 0), (1, 3), (3, 2)])
def test_overlay_puts_the_weight_on_the_pixels_the_key_pools(key):
    # 8x8 queries, keys pooled 2x2 -> 4x4; the image is 16x16, so each key covers 4x4 pixels.
    attention = _one_hot_attention((8, 8), (4, 4), (5, 1), key)
    overlay = attention_overlay(
        attention, (5, 1), key_grid=(4, 4), query_grid=(8, 8), size=(16, 16)
    )
    expected = np.zeros((16, 16))
    expected[4 * key[0] : 4 * key[0] + 4, 4 * key[1] : 4 * key[1] + 4] = 1
    np.testing.assert_array_equal(overlay, expected)


def test_overlay_reads_the_query_row_and_keeps_row_major_order():
    rng = np.random.default_rng(0)
    attention = rng.dirichlet(np.ones(6), size=12)  # queries 3x4, keys 3x2 (pooled 1x2)
    for flat in range(12):
        q = np.unravel_index(flat, (3, 4))
        overlay = attention_overlay(
            attention, flat, key_grid=(3, 2), query_grid=(3, 4), size=(3, 4)
        )
        assert np.array_equal(overlay, np.repeat(attention[flat].reshape(3, 2), 2, axis=1)), flat
        same = attention_overlay(
            attention, tuple(q), key_grid=(3, 2), query_grid=(3, 4), size=(3, 4)
        )
        np.testing.assert_array_equal(same, overlay)


def test_overlay_accepts_a_single_row():
    row = np.arange(4.0)
    overlay = attention_overlay(row, (0, 0), key_grid=(2, 2), query_grid=(2, 2), size=(2, 2))
    np.testing.assert_array_equal(overlay, [[0, 1], [2, 3]])


def test_floor_pooling_leaves_uncovered_pixels_blank():
    # 5 query rows pooled by 2: keys cover rows 0..3; row 4 has no key.
    attention = np.ones((25, 4)) / 4
    overlay = attention_overlay(attention, 0, key_grid=(2, 2), query_grid=(5, 5), size=(5, 5))
    assert np.isnan(overlay[4]).all() and np.isnan(overlay[:, 4]).all()
    assert np.allclose(overlay[:4, :4], 0.25)


def test_video_overlay_shows_the_frame_s_key_slice():
    # (T, H, W) = (4, 4, 4) queries, keys pooled (2, 2, 2) -> (2, 2, 2); 8 frames of 8x8.
    attention = _one_hot_attention((4, 4, 4), (2, 2, 2), (3, 0, 0), (1, 0, 1))
    kwargs = dict(key_grid=(2, 2, 2), query_grid=(4, 4, 4), size=(8, 8, 8))
    # Frames 4..7 are query steps 2..3, pooled into key step 1: the key is there.
    late = attention_overlay(attention, (3, 0, 0), frame=5, **kwargs)
    assert late[:4, 4:].min() == 1 and np.nansum(late) == 16
    early = attention_overlay(attention, (3, 0, 0), frame=1, **kwargs)
    assert np.nansum(early) == 0
    # Without a frame, the query's own (query step 3 -> frame 7, key step 1).
    np.testing.assert_array_equal(attention_overlay(attention, (3, 0, 0), **kwargs), late)


def test_plot_draws_the_overlay_and_marks_the_query():
    attention = _one_hot_attention((8, 8), (4, 4), (2, 6), (0, 3))
    image = np.zeros((8, 8, 3))
    ax = plot_attention(attention, image, (2, 6), key_grid=(4, 4), colorbar=False)
    overlay = np.ma.getdata(ax.images[-1].get_array())
    assert overlay.shape == (8, 8)
    assert overlay[0:2, 6:8].min() == 1 and overlay.sum() == 4  # the key's 2x2 pixels
    (marker,) = ax.lines
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == (6, 2)  # (x, y) in pixels


def test_plot_places_the_query_on_a_larger_image():
    # Features at stride 4: query (1, 2) of a 4x4 grid is the centre of pixels 4..7, 8..11.
    attention = np.full((16, 4), 0.25)
    ax = plot_attention(
        attention, np.zeros((16, 16)), (1, 2), key_grid=(2, 2), query_grid=(4, 4), colorbar=False
    )
    (marker,) = ax.lines
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == (9.5, 5.5)
    assert ax.images[-1].get_array().shape == (16, 16)


def test_plot_draws_a_video_frame_on_a_given_axes():
    rng = np.random.default_rng(1)
    video = rng.uniform(-1, 2, size=(4, 6, 6, 3))  # float RGB outside [0, 1]: rescaled
    attention = rng.dirichlet(np.ones(18), size=144)  # (4, 6, 6) queries, keys (2, 3, 3)
    _, ax = plt.subplots()
    returned = plot_attention(attention, video, (1, 2, 3), key_grid=(2, 3, 3), frame=3, ax=ax)
    assert returned is ax
    shown = ax.images[0].get_array()
    assert shown.min() >= 0 and shown.max() <= 1
    assert ax.lines[0].get_fillstyle() == "none"  # the query is in frame 1, not 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(attention=np.ones((2, 64, 16))), r"attention has shape \(2, 64, 16\): .*\(64, 16\)"),
        (dict(attention=np.ones((64, 15))), r"attention has shape \(64, 15\)"),
        (dict(key_grid=(3, 3)), r"key_grid \(3, 3\) is not a pooling of query_grid \(8, 8\)"),
        (dict(key_grid=(4,)), r"key_grid is \(4,\): expected a grid shape"),
        (dict(key_grid=(16, 4)), r"key_grid \(16, 4\) is not a pooling"),
        (dict(query=(8, 0)), r"query is \(8, 0\): expected 2 integer coordinates inside"),
        (dict(query=64), r"query is 64: expected a flat index 0 <= query < 64"),
        (dict(query=(1.5, 2)), r"query is \(1.5, 2\)"),
        (dict(image=np.ones((3, 8, 8))), r"image has shape \(3, 8, 8\): expected \(H, W\)"),
        (dict(image=np.ones((8, 8, 3)), frame=0), r"frame is 0: expected None for an image"),
        (dict(query_grid=(8, 0)), r"query_grid is \(8, 0\): expected a grid shape"),
    ],
)
def test_wrong_arguments_are_named(kwargs, message):
    args = dict(
        attention=np.full((64, 16), 1 / 16),
        image=np.zeros((8, 8, 3)),
        query=(2, 2),
        key_grid=(4, 4),
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        plot_attention(
            args.pop("attention"), args.pop("image"), args.pop("query"), colorbar=False, **args
        )


def test_video_frame_out_of_range_is_named():
    video = np.zeros((4, 4, 4))
    with pytest.raises(ValueError, match=r"frame is 4: expected a frame index 0 <= frame < 4"):
        plot_attention(np.ones((64, 8)) / 8, video, 0, key_grid=(2, 2, 2), frame=4)


def test_importing_the_core_loads_no_plotting_library():
    code = (
        "import sys, nonlocal_core, nonlocal_core.plotting\n"
        "bad = {'matplotlib', 'torch', 'keras', 'tensorflow', 'jax'} & set(sys.modules)\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_grids_of_different_ranks_are_refused():
    with pytest.raises(ValueError, match=r"key_grid \(2, 2, 2\) is not a pooling of query_grid"):
        attention_overlay(np.ones(8), 0, key_grid=(2, 2, 2), query_grid=(4, 4), size=(4, 4))
    with pytest.raises(ValueError, match=r"size is \(2, 4, 4\): expected 2 extents"):
        attention_overlay(np.ones(4), 0, key_grid=(2, 2), query_grid=(4, 4), size=(2, 4, 4))


def test_colour_scale_starts_at_zero_and_tops_at_vmax():
    attention = np.full((16, 4), 0.25)
    image = np.zeros((4, 4))
    ax = plot_attention(attention, image, 0, key_grid=(2, 2), colorbar=False)
    assert ax.images[-1].get_clim() == (0.0, 0.25)  # default: the largest weight drawn
    ax = plot_attention(attention, image, 0, key_grid=(2, 2), vmax=0.5, colorbar=False)
    assert ax.images[-1].get_clim() == (0.0, 0.5)


def test_eight_bit_images_keep_their_values():
    image = np.full((4, 4, 3), 100, dtype=np.uint8)
    image[0, 0] = (200, 150, 100)
    ax = plot_attention(np.full((16, 4), 0.25), image, 0, key_grid=(2, 2), colorbar=False)
    shown = ax.images[0].get_array()
    np.testing.assert_allclose(shown[0, 0], np.array([200, 150, 100]) / 255)
    np.testing.assert_allclose(shown[1, 1], 100 / 255)  # no contrast stretch
