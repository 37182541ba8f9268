"""nonlocal_torch.demo: the smoke run writes its figures and numbers, the task's labels say
what the images show, and the baseline cannot see both marks at once (the design's claim)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nonlocal_torch import NonLocalBlock, demo

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


def test_smoke_run_writes_figures_and_numbers(tmp_path, capsys):
    doc = demo.main(["--smoke", "--out", str(tmp_path / "out")])
    out = tmp_path / "out"
    for name in ("curves.png", "attention.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and 10_000 < len(data) < 400_000, name
    saved = json.loads((out / "curves.json").read_text())
    assert saved["models"].keys() == {"baseline", "non-local"}
    for record in saved["models"].values():
        assert record["step"] == [1, 2] and len(record["test_accuracy"]) == 2
        assert 0 <= record["accuracy"] <= 1 and np.isfinite(record["train_loss"]).all()
    params = [saved["models"][m]["parameters"] for m in ("baseline", "non-local")]
    assert abs(params[0] - params[1]) / params[1] < 0.01  # "similar parameter count"
    # Queries on both marks and the centre of one equal and one different pair.
    queries = saved["attention_queries"]
    assert [q["on"] for q in queries] == ["left mark", "right mark", "centre"] * 2
    assert [q["query"][1] < demo.BAND for q in queries] == [True, False, False] * 2
    assert doc["models"]["non-local"]["parameters"] == params[1]
    printed, progress = capsys.readouterr()
    assert "| baseline |" in printed and "| non-local |" in printed
    assert "2/2" in progress
    table = (out / "results.md").read_text()
    assert table.splitlines()[0].startswith("| model | test accuracy |")


def test_runs_are_reproducible():
    settings = demo.Settings(steps=2, batch=4, test_size=8, eval_every=1)
    x, y, _ = demo.colour_match(8, np.random.default_rng(3))
    test = (torch.from_numpy(x), torch.from_numpy(y))
    first = demo.train("non-local", settings, 5, test)[1]
    again = demo.train("non-local", settings, 5, test)[1]
    assert first["train_loss"] == again["train_loss"]


def test_labels_say_whether_the_marks_have_the_same_colour():
    x, y, marks = demo.colour_match(200, np.random.default_rng(7))
    assert 60 < y.sum() < 140  # both labels, about equally often
    for image, label, (left, right) in zip(x, y, marks):
        assert left[1] < demo.BAND and right[1] >= demo.SIZE - demo.BAND
        colours = [
            image[:, r : r + demo.MARK, c : c + demo.MARK].mean(axis=(1, 2))
            for r, c in (left, right)
        ]
        # Noise is small next to the gap between palette colours.
        assert (np.abs(colours[0] - colours[1]).max() < 0.3) == bool(label)


def _seen_columns(model: torch.nn.Module, column: int) -> np.ndarray:
    """The input columns the features at `column` (before pooling) depend on."""
    features = torch.nn.Sequential(*list(model.children())[:-3]).eval()
    x = torch.randn(1, 3, demo.SIZE, demo.SIZE, requires_grad=True)
    features(x)[..., column].sum().backward()
    return np.flatnonzero(x.grad.abs().sum(dim=(0, 1, 2)).numpy() > 0)


def test_no_baseline_feature_sees_both_marks():
    torch.manual_seed(0)
    model = demo.build_model("baseline")
    for column in range(demo.SIZE):
        seen = _seen_columns(model, column)
        sees_left = seen.min() < demo.BAND
        sees_right = seen.max() >= demo.SIZE - demo.BAND
        assert not (sees_left and sees_right), (column, seen)


def test_non_local_features_see_the_whole_width():
    torch.manual_seed(0)
    model = demo.build_model("non-local")
    block = model.middle
    assert isinstance(block, NonLocalBlock)
    with torch.no_grad():
        block.norm.weight.fill_(1.0)  # a new block is the identity: open its path
    seen = _seen_columns(model, 0)
    assert seen.min() == 0 and seen.max() == demo.SIZE - 1


def test_bad_step_count_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--steps", "0"])
    assert exit_info.value.code == 2
    assert "argument --steps: '0' is not a step count: expected an integer >= 1" in (
        capsys.readouterr().err
    )
