"""Fuzzing the saved-block reader and writer: damaged files fail cleanly, saves are atomic.

`nonlocal_core.load` on a damaged or foreign file raises `FileFormatError` (a ValueError)
whose message names the file - or, where the damage touched nothing that matters (a zip
timestamp), returns exactly what was saved: never a different number.
"""

from __future__ import annotations

import functools
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonlocal_core import FileFormatError, NonLocalConfig, load, random_weights, save
from nonlocal_core import io as core_io
from tests.hostile import Hostile, fuzz_settings, junk

CONFIG = NonLocalConfig(4, spatial_dims=2, instantiation="concatenation", subsample=True)
WEIGHTS = random_weights(CONFIG, seed=5)


@functools.cache
def _saved() -> bytes:
    """The bytes `save` writes for CONFIG and WEIGHTS (a function, not a fixture: Hypothesis
    would print a fixture's value - 4 KiB of bytes - with every failing example)."""
    path = Path(tempfile.mkdtemp()) / "block.npz"
    save(path, CONFIG, WEIGHTS)
    return path.read_bytes()


@pytest.fixture
def saved() -> bytes:
    return _saved()


def _entries(replace: dict) -> bytes:
    """A saved block's archive with some entries replaced (None drops one)."""
    header = json.dumps({"spec_version": "1.0", "config": CONFIG.to_dict()}).encode()
    arrays = {**WEIGHTS, "__config__": np.frombuffer(header, np.uint8)}
    for name, value in replace.items():
        if value is None:
            arrays.pop(name)
        else:
            arrays[name] = value
    buffer = io.BytesIO()
    # allow_pickle is a reader option; savez writes object arrays as pickles, as a hostile
    # file would contain them.
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _header(document) -> np.ndarray:
    # default=repr: junk (bytes, complex numbers, objects) becomes strings, as in a real file.
    return np.frombuffer(json.dumps(document, default=repr).encode(), np.uint8)


@st.composite
def damaged(draw) -> Hostile:
    """A description and the bytes of a damaged or foreign saved block."""
    good = _saved()
    kind = draw(st.sampled_from(["truncate", "flip", "random", "append", "entries"]))
    if kind == "truncate":
        end = draw(st.integers(0, len(good) - 1))
        return Hostile(f"truncated to {end} bytes", good[:end])
    if kind == "flip":
        data = bytearray(good)
        positions = draw(st.lists(st.integers(0, len(good) - 1), min_size=1, max_size=4))
        for p in positions:
            data[p] ^= draw(st.integers(1, 255))
        return Hostile(f"bytes flipped at {positions}", bytes(data))
    if kind == "random":
        return Hostile("random bytes", draw(st.binary(max_size=600)))
    if kind == "append":
        return Hostile("junk appended", good + draw(st.binary(min_size=1, max_size=64)))
    edits = {
        "header junk": lambda: _entries({"__config__": _header(draw(junk()))}),
        "header bytes": lambda: _entries(
            {"__config__": np.frombuffer(draw(st.binary(max_size=40)), np.uint8)}
        ),
        "header config junk": lambda: _entries(
            {
                "__config__": _header(
                    {"spec_version": "1.0", "config": {"in_channels": draw(junk())}}
                )
            }
        ),
        "header of floats": lambda: _entries({"__config__": np.zeros(8)}),
        "no header": lambda: _entries({"__config__": None}),
        "weight missing": lambda: _entries({"g.weight": None}),
        "weight extra": lambda: _entries({"theta.extra": np.zeros(2)}),
        "weight reshaped": lambda: _entries({"g.weight": np.zeros((3, 3))}),
        "weight complex": lambda: _entries({"g.weight": WEIGHTS["g.weight"] + 1j}),
        "weight text": lambda: _entries({"g.weight": WEIGHTS["g.weight"].astype(str)}),
        "weight pickled": lambda: _entries({"g.weight": WEIGHTS["g.weight"].astype(object)}),
        "negative variance": lambda: _entries({"norm.running_var": -np.ones(4)}),
    }
    name = draw(st.sampled_from(sorted(edits)))
    return Hostile(name, edits[name]())


@fuzz_settings(200)
@given(st.data())
def test_a_damaged_file_fails_naming_the_file_or_loads_unchanged(tmp_path_factory, data):
    # spec: W-3
    damage = data.draw(damaged(), label="damage")
    what, content = damage.what, damage.value
    path = tmp_path_factory.mktemp("damaged") / "block.npz"
    path.write_bytes(content)
    try:
        config, weights = load(path)
    except FileFormatError as exc:
        assert repr(str(path)) in str(exc), f"{what}: the error does not name the file: {exc}"
        return
    # Only harmless damage (zip metadata NumPy ignores) may load, and then exactly.
    assert config == CONFIG, what
    assert sorted(weights) == sorted(WEIGHTS), what
    for name, value in WEIGHTS.items():
        assert weights[name].dtype == value.dtype and np.array_equal(weights[name], value), what


def test_the_examples_of_the_issue_fail_cleanly(tmp_path, saved):
    path = tmp_path / "block.npz"
    cases = {
        "truncated": (saved[: len(saved) // 2], "not a zip archive"),
        "header []": (_entries({"__config__": _header([])}), "expected a JSON object"),
        "header without config": (
            _entries({"__config__": _header({"spec_version": "1.0"})}),
            "expected a JSON object",
        ),
        "pickled weight": (
            _entries({"g.weight": WEIGHTS["g.weight"].astype(object)}),
            "Object arrays cannot be loaded",
        ),
        "spec 2": (
            _entries({"__config__": _header({"spec_version": "2.0", "config": {}})}),
            "spec",
        ),
    }
    for what, (content, message) in cases.items():
        path.write_bytes(content)
        with pytest.raises(FileFormatError) as info:
            load(path)
        assert repr(str(path)) in str(info.value) and message in str(info.value), what


def test_os_errors_stay_os_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.npz")
    with pytest.raises(IsADirectoryError):
        load(tmp_path)


# Atomic saves ----------------------------------------------------------------------------


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_rejected_save_leaves_the_old_file_and_nothing_else(tmp_path, saved):
    path = tmp_path / "block.npz"
    path.write_bytes(saved)
    broken = {k: v for k, v in WEIGHTS.items() if k != "g.bias"}
    with pytest.raises(ValueError, match=r"g\.bias"):
        save(path, CONFIG, broken)
    with pytest.raises(TypeError, match="config"):
        save(path, CONFIG.to_dict(), WEIGHTS)
    assert path.read_bytes() == saved
    assert _listing(tmp_path) == ["block.npz"]


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, OSError])
def test_an_interrupted_save_leaves_the_old_file_and_nothing_else(
    tmp_path, saved, monkeypatch, interruption
):
    # spec: W-3 (atomic writes)
    path = tmp_path / "block.npz"
    path.write_bytes(saved)

    def savez_then_fail(stream, **arrays):
        stream.write(b"PK\x03\x04 half an archive")
        raise interruption("interrupted")

    monkeypatch.setattr(core_io.np, "savez", savez_then_fail)
    with pytest.raises(interruption):
        save(path, CONFIG, WEIGHTS)
    assert path.read_bytes() == saved
    assert _listing(tmp_path) == ["block.npz"]


def test_a_save_replaces_the_file_whole(tmp_path):
    path = tmp_path / "block.npz"
    path.write_bytes(b"an older, unrelated file")
    save(path, CONFIG, WEIGHTS)
    config, weights = load(path)
    assert config == CONFIG and all(np.array_equal(weights[k], WEIGHTS[k]) for k in WEIGHTS)
    assert _listing(tmp_path) == ["block.npz"]
    assert zipfile.is_zipfile(path) and os.stat(path).st_size > 0


def test_a_save_into_a_missing_folder_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        save(tmp_path / "missing" / "block.npz", CONFIG, WEIGHTS)
    assert _listing(tmp_path) == []
