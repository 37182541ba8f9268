"""The README's code runs: its usage examples and the two set-up commands it names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.DOTALL)


def test_readme_has_numpy_torch_and_keras_examples():
    assert [
        ("nonlocal_core" in b, "nonlocal_torch" in b, "nonlocal_keras" in b) for b in BLOCKS
    ] == [
        (True, False, False),
        (False, True, False),
        (False, False, True),
    ]


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    # Keras examples run on the torch backend here: the fastest to import of the three.
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    result = subprocess.run(
        [sys.executable, "-c", BLOCKS[index]], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr


def test_readme_commands_are_the_dev_jobs_ci_runs():
    assert "./dev conformance" in README and "./dev test" in README
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line[:1] != "#"]
    assert ci[-1] == "exec ./dev test", "CI runs ./dev test with every step (no step named)"
    jobs = (ROOT / "dev").read_text()
    assert "\n  conformance)\n    setup\n" in jobs and "\n  test)\n    setup\n" in jobs
