"""The committed golden vectors are exactly what the generator writes, and replay exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nonlocal_core import nonlocal_forward
from nonlocal_core.vectors import CASES, DEFAULT_DIR, generate, load_case, main


def test_committed_vectors_equal_a_fresh_generation():
    # spec: VEC-1
    files = generate()
    committed = sorted(p.name for p in DEFAULT_DIR.glob("*.json"))
    assert committed == sorted(files), "spec/vectors has missing or stale files"
    for name, text in files.items():
        assert (DEFAULT_DIR / name).read_text() == text, f"{name} differs: regenerate"


def test_check_mode_fails_on_any_difference(tmp_path, capsys):
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--out", str(tmp_path), "--check"]) == 0
    path = tmp_path / "embedded_2d.json"
    path.write_text(path.read_text().replace("0.1257302210933933", "0.1257302210933934", 1))
    assert main(["--out", str(tmp_path), "--check"]) == 1
    assert "embedded_2d.json" in capsys.readouterr().out


@pytest.mark.parametrize("case", [c["name"] for c in CASES])
def test_vector_replays_through_the_reference(case):
    # spec: VEC-1
    data = load_case(DEFAULT_DIR / f"{case}.json")
    z, a = nonlocal_forward(
        data["inputs"]["x"],
        data["weights"],
        data["config"],
        context=data["inputs"]["context"],
        key_mask=data["inputs"]["key_mask"],
        training=data["training"],
        return_attention=True,
    )
    np.testing.assert_array_equal(z, data["expected"]["z"])
    np.testing.assert_array_equal(a, data["expected"]["attention"])


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
