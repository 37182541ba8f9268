"""``python -m nonlocal_core.convert``: a checkpoint in, a table of its blocks out, and the
blocks written as canonical files or in another implementation's layout."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest

from nonlocal_core import load, profile, random_weights
from nonlocal_core.convert import find_blocks, to_state_dict
from nonlocal_core.convert.__main__ import main
from nonlocal_core.safetensors import read

CAFFE2 = profile("caffe2", dim_in=8, dim_inner=4)
BLOCKS = ("nonlocal_conv3_1", "nonlocal_conv3_3", "nonlocal_conv4_1")


def _caffe2_checkpoint(path):
    """A Caffe2 (video-nonlocal-net) pickle: three blocks, backbone blobs, momentum blobs."""
    blobs = {"res3_1_branch2a_w": np.ones((4, 8, 1, 1, 1), np.float32)}
    for i, name in enumerate(BLOCKS):
        weights = random_weights(CAFFE2, seed=i)
        for key, value in to_state_dict(weights, "caffe2", CAFFE2, prefix=name + "_").items():
            blobs[key] = value.astype(np.float32)
            blobs[key + "_momentum"] = np.zeros_like(blobs[key])
    path.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
    return blobs


def test_lists_and_writes_canonical_files(tmp_path, capsys):
    blobs = _caffe2_checkpoint(tmp_path / "c2.pkl")
    assert main([str(tmp_path / "c2.pkl"), "--from", "caffe2", str(tmp_path / "out")]) == 0
    table = capsys.readouterr().out
    assert "in 'blobs'): 73 entries, 3 caffe2 block(s)" in table
    for name in BLOCKS:
        row = next(line for line in table.splitlines() if line.startswith(name))
        assert row.split()[1:5] == ["8", "4", "3", "embedded_gaussian"]
        config, weights = load(tmp_path / "out" / f"{name}.safetensors")
        assert config == CAFFE2
        np.testing.assert_array_equal(weights["out.weight"], blobs[f"{name}_out_w"][..., 0, 0, 0])
        np.testing.assert_array_equal(weights["norm.running_var"], blobs[f"{name}_bn_riv"])


def test_writes_another_layout_and_round_trips(tmp_path, capsys):
    _caffe2_checkpoint(tmp_path / "c2.pkl")
    out = tmp_path / "slowfast.safetensors"
    argv = [str(tmp_path / "c2.pkl"), "--from", "caffe2", "--to", "slowfast", str(out)]
    assert main(argv) == 0
    state, metadata = read(out)
    assert sorted(state) == sorted(
        f"{name}.{key}"
        for name in BLOCKS
        for key in ("conv_theta.weight", "conv_theta.bias", "conv_phi.weight", "conv_phi.bias",
                    "conv_g.weight", "conv_g.bias", "conv_out.weight", "conv_out.bias",
                    "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                    "bn.num_batches_tracked")
    )  # fmt: skip
    assert metadata["format"] == "slowfast state dict"
    found = find_blocks(state, "slowfast", pool_size=[1, 2, 2])
    assert [b.prefix for b in found] == list(BLOCKS)
    assert all(b.config == CAFFE2.replace(norm_eps=1e-5) for b in found)
    capsys.readouterr()
    # SlowFast's BN has eps 1e-5 by default; Caffe2's is 1.0000001e-5: say it, or it differs.
    assert main([str(out), "--from", "slowfast", "--arg", "pool_size=[1,2,2]",
                 "--arg", "norm_eps=1.0000001e-5", str(tmp_path / "back")]) == 0  # fmt: skip
    for name in BLOCKS:
        assert load(tmp_path / "back" / f"{name}.safetensors")[0] == CAFFE2


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["{dir}/missing.pkl", "--from", "caffe2"], 1, "cannot read"),
        (["{dir}/c2.pkl", "--from", "caffe2", "--to", "timm", "{dir}/x"], 1, "timm cannot express"),
        (["{dir}/c2.pkl", "--from", "caffe2", "--arg", "USE_SOFTMAX"], 2, "expected NAME=VALUE"),
        (["{dir}/c2.pkl", "--from", "caffe2", "--arg", "dim_in=9"], 1, "has shape"),
        (["{dir}/c2.pkl", "--from", "caffe2", "--arg", "bogus=1"], 1, "unknown argument"),
        (["{dir}/c2.pkl", "--from", "detectron"], 2, "invalid choice"),
        (["{dir}/hostile.pkl", "--from", "caffe2"], 1, "refused"),
    ],
)  # fmt: skip
def test_errors_are_one_clear_line(tmp_path, capsys, argv, status, message):
    _caffe2_checkpoint(tmp_path / "c2.pkl")
    (tmp_path / "hostile.pkl").write_bytes(b"cos\nsystem\n(S'touch pwned'\ntR.")
    argv = [arg.format(dir=tmp_path) for arg in argv]
    if status == 2:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    else:
        assert main(argv) == status
    assert message in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()


def test_runs_as_a_module_without_a_traceback(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"PK\x03\x04 not really a zip")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nonlocal_core.convert",
            str(tmp_path / "junk.pth"),
            "--from",
            "mmcv",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
