"""The layer under `keras.distribution.DataParallel` on JAX (two virtual CPU devices): one
training step equals the same step on one device with the whole batch, BN statistics
included (they are over the global batch, not each device's half)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import BACKEND

pytestmark = pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on JAX")

CHECK = Path(__file__).with_name("distributed_check.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("instantiation", "strategy"),
    [
        ("gaussian", "chunked"),
        ("embedded_gaussian", "auto"),
        ("concatenation", "sorted"),
    ],
)
def test_data_parallel_step_equals_the_single_device_step(instantiation, strategy):
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [sys.executable, str(CHECK), instantiation, strategy],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["devices"] == ["cpu:0", "cpu:1"], result["devices"]
    # The block's kernels, BN affine weights and statistics moved on the one-device step ...
    moved = set(result["moved"])
    block = {n for n in result["names"] if n.startswith("nonlocal/") and "bias" not in n}
    assert len(block) >= 6 and block <= moved, sorted(block - moved)
    # ... and the two-device step moved every weight the same way (float32 rounding apart;
    # BN over each device's half of the batch would differ at order 1 here).
    # W_z's bias feeds straight into training-mode BN, which removes any constant: its
    # gradient is zero but for float32 cancellation noise, which follows the reduction
    # order and so differs between one device and two.
    compared = {n: d for n, d in result["differences"].items() if n != "nonlocal/out_bias"}
    worst = max(compared.items(), key=lambda item: item[1])
    assert worst[1] < 1e-3, worst
