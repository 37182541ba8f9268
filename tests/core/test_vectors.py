"""The golden vectors: the same bytes on every machine, exact, and replayed by the reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nonlocal_conformance.dtypes import Precision
from nonlocal_conformance.suite import SAFETY, assert_within
from nonlocal_conformance.trace import trace_forward
from nonlocal_core import nonlocal_forward
from nonlocal_core.oracle import PRECISION, exact_forward
from nonlocal_core.vectors import CASES, DEFAULT_DIR, load_case, main

ROOT = DEFAULT_DIR.parents[1]
NAMES = [c["name"] for c in CASES]

# Two OpenBLAS kernels whose float64 matrix products round differently: the generator that
# took its expected values from the BLAS-backed reference wrote different files under each.
# Both need only SSE4.2 at most, so forcing them cannot crash an x86-64 CPU (Haswell's kernel
# would on one without AVX2); elsewhere OpenBLAS ignores the variable and the test still holds.
CORETYPES = ("Prescott", "Nehalem")


def test_vectors_are_the_same_bytes_under_different_blas_kernels(tmp_path):
    # spec: VEC-1
    runs = {}
    for coretype in CORETYPES:
        out = tmp_path / coretype
        command = [sys.executable, "-m", "nonlocal_core.vectors", "--out", str(out)]
        env = {**os.environ, "OPENBLAS_CORETYPE": coretype}
        runs[coretype] = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    files = {}
    for coretype, process in runs.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"OPENBLAS_CORETYPE={coretype}: {stderr}"
        files[coretype] = {p.name: p.read_bytes() for p in (tmp_path / coretype).glob("*.json")}
    first, second = CORETYPES
    differ = sorted(n for n in files[first] if files[first][n] != files[second].get(n))
    assert files[first].keys() == files[second].keys() and not differ, (
        f"the generator depends on the BLAS kernel: {differ} differ between {CORETYPES}"
    )
    committed = {p.name: p.read_bytes() for p in DEFAULT_DIR.glob("*.json")}
    assert sorted(committed) == sorted(files[first]), "spec/vectors has missing or stale files"
    stale = sorted(n for n in committed if committed[n] != files[first][n])
    assert not stale, f"{stale} differ from a fresh generation: regenerate spec/vectors"


def test_check_mode_fails_on_any_difference(tmp_path, capsys):
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--out", str(tmp_path), "--check"]) == 0
    path = tmp_path / "embedded_2d.json"
    path.write_text(path.read_text().replace("0.1257302210933933", "0.1257302210933934", 1))
    assert main(["--out", str(tmp_path), "--check"]) == 1
    assert "embedded_2d.json" in capsys.readouterr().out


def _replay(data: dict) -> None:
    """Fail unless the float64 reference reproduces the stored expected values to within
    the rounding bound of the tolerance model at float64 (they are the exact results)."""
    kwargs = {
        "context": data["inputs"]["context"],
        "key_mask": data["inputs"]["key_mask"],
        "training": data["training"],
    }
    x, weights, config = data["inputs"]["x"], data["weights"], data["config"]
    z, a = nonlocal_forward(x, weights, config, return_attention=True, **kwargs)
    bound = trace_forward(x, weights, config, precision=Precision.default("float64"), **kwargs)
    assert_within(z, data["expected"]["z"], SAFETY * bound.err_z, f"z of {data['name']}")
    expected_a = data["expected"]["attention"]
    assert_within(a, expected_a, SAFETY * bound.err_attention, f"attention of {data['name']}")


@pytest.mark.parametrize("case", NAMES)
def test_vector_replays_through_the_reference(case):
    # spec: VEC-1 NUM-1
    _replay(load_case(DEFAULT_DIR / f"{case}.json"))


TAMPERINGS = {
    "z_relative_1e-6": ("z", lambda v: v * (1 + 1e-6)),
    "z_plus_half": ("z", lambda v: v + 0.5),
    # Attention entries lie in [0, 1], and two concatenation cases' are all 0 (ReLU).
    "attention_plus_1e-6": ("attention", lambda v: v + 1e-6),
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
@pytest.mark.parametrize("case", NAMES)
def test_replay_fails_on_a_tampered_expected_value(case, tampering):
    data = load_case(DEFAULT_DIR / f"{case}.json")
    key, change = TAMPERINGS[tampering]
    values = data["expected"][key]
    # The largest entry, so a relative change moves it (z is never all 0).
    where = np.unravel_index(int(np.argmax(np.abs(values))), values.shape)
    values[where] = change(values[where])
    with pytest.raises(AssertionError, match=f"^{key} of {case}"):
        _replay(data)


@pytest.mark.parametrize("case", NAMES)
def test_expected_values_do_not_move_with_more_working_precision(case):
    # The oracle's result rounded to float64 is the exact one's: 120 more bits change nothing.
    data = load_case(DEFAULT_DIR / f"{case}.json")
    z, a = exact_forward(
        data["inputs"]["x"],
        data["weights"],
        data["config"],
        context=data["inputs"]["context"],
        key_mask=data["inputs"]["key_mask"],
        training=data["training"],
        return_attention=True,
        precision=PRECISION + 120,
    )
    np.testing.assert_array_equal(z, data["expected"]["z"])
    np.testing.assert_array_equal(a, data["expected"]["attention"])


def test_importing_nonlocal_core_does_not_import_mpmath():
    code = "import sys, nonlocal_core, nonlocal_core.vectors; print('mpmath' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_vectors_cover_every_option_the_issue_lists():
    index = json.loads((DEFAULT_DIR / "index.json").read_text())
    configs = [load_case(DEFAULT_DIR / c["file"]) for c in index["cases"]]
    seen = {(k, str(v)) for c in configs for k, v in c["config"].to_dict().items()} | {
        ("training", str(c["training"])) for c in configs
    }
    seen |= {("context", str(c["inputs"]["context"] is not None)) for c in configs}
    seen |= {("mask", str(c["inputs"]["key_mask"] is not None)) for c in configs}
    for field, values in {
        "instantiation": ["gaussian", "embedded_gaussian", "dot_product", "concatenation"],
        "spatial_dims": ["1", "2", "3"],
        "data_format": ["channels_first", "channels_last"],
        "pool_position": ["after_projection", "before_projection"],
        "norm": ["batch", "None"],
        "residual": ["True", "False"],
        "training": ["True", "False"],
        "context": ["True", "False"],
        "mask": ["True", "False"],
    }.items():
        for value in values:
            assert (field, value) in seen, (field, value)
    assert any(c["config"].subsample is not None for c in configs)


@pytest.mark.parametrize("case", NAMES)
def test_every_vector_exercises_its_pairwise_function(case):
    # An all-zero attention (a concatenation whose ReLU cut every pair) would leave f untested.
    attention = load_case(DEFAULT_DIR / f"{case}.json")["expected"]["attention"]
    assert (attention > 0).any() and (attention < 1).any()
