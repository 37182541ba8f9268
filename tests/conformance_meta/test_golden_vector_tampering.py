"""The suite's golden-vector replay holds implementations to the stored expected values: a
copy of spec/vectors with one value changed fails it, the untouched copy passes."""

from __future__ import annotations

import json
import shutil

import pytest

from nonlocal_core.vectors import DEFAULT_DIR

from .runner import run_suite

TAMPERED_CASE = "embedded_2d"


def _copy(tmp_path, change=None, key: str = "z"):
    directory = tmp_path / "vectors"
    shutil.copytree(DEFAULT_DIR, directory)
    if change is not None:
        path = directory / f"{TAMPERED_CASE}.json"
        data = json.loads(path.read_text())
        values = data["expected"][key]["data"]
        i = max(range(len(values)), key=lambda k: abs(values[k]))
        values[i] = change(values[i])
        path.write_text(json.dumps(data))
    return directory


def _golden(tmp_path, directory, dtype: str) -> tuple[int, dict]:
    return run_suite("numpy", tmp_path, "-k", "golden", f"--vectors={directory}", dtype=dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_untampered_copy_passes(tmp_path, dtype):
    code, report = _golden(tmp_path, _copy(tmp_path), dtype)
    assert code == pytest.ExitCode.OK
    assert report["totals"]["passed"] == len(list(DEFAULT_DIR.glob("*.json"))) - 1


@pytest.mark.parametrize(
    ("dtype", "key", "change"),
    [
        ("float64", "z", lambda v: v * (1 + 1e-6)),
        ("float64", "attention", lambda v: v * (1 + 1e-6)),
        ("float64", "z", lambda v: v + 0.5),
        ("float32", "z", lambda v: v + 0.5),
    ],
    ids=[
        "float64-z-relative-1e-6",
        "float64-attention-relative-1e-6",
        "float64-z+0.5",
        "float32-z+0.5",
    ],
)
def test_tampered_value_fails_the_replay(tmp_path, dtype, key, change):
    code, report = _golden(tmp_path, _copy(tmp_path, change, key), dtype)
    assert code == pytest.ExitCode.TESTS_FAILED
    failed = [t for t in report["tests"] if t["outcome"] == "failed"]
    assert [t["params"] for t in failed] == [TAMPERED_CASE]
    assert failed[0]["detail"].startswith(f"AssertionError: {key} of {TAMPERED_CASE}")
