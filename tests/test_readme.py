"""The README's code runs and keeps its promises: its usage examples and the two set-up
commands it names."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
# What each usage example promises about its output, checked here after the example has run,
# whatever asserts the example itself keeps.
PROMISES = {
    "nonlocal_core": "z.shape == x.shape and attention.shape == (2, 4 * 14 * 14, 4 * 7 * 7)",
    "nonlocal_torch": "z.shape == x.shape and torch.equal(z, x)",  # a new block: the identity
    "nonlocal_keras": "z.shape == x.shape and bool(keras.ops.all(z == x))",
}


def _library(block: str) -> str:
    (library,) = [name for name in PROMISES if name in block]
    return library


def test_readme_has_numpy_torch_and_keras_examples():
    assert [
        ("nonlocal_core" in b, "nonlocal_torch" in b, "nonlocal_keras" in b) for b in BLOCKS
    ] == [
        (True, False, False),
        (False, True, False),
        (False, False, True),
    ]


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs_and_keeps_its_promise(index):
    block = BLOCKS[index]
    # A reader sees the promise in the example itself, as an assert.
    assert any(isinstance(node, ast.Assert) for node in ast.walk(ast.parse(block)))
    check = f"\nassert {PROMISES[_library(block)]}\nprint('promise kept')\n"
    # Keras examples run on the torch backend here: the fastest to import of the three.
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    result = subprocess.run(
        [sys.executable, "-c", block + check],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("promise kept\n")


def test_readme_commands_are_the_dev_jobs_ci_runs():
    assert "./dev conformance" in README and "./dev test" in README
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line[:1] != "#"]
    assert ci[-1] == "exec ./dev test", "CI runs ./dev test with every step (no step named)"
    jobs = (ROOT / "dev").read_text()
    assert "\n  conformance)\n    setup\n" in jobs and "\n  test)\n    setup\n" in jobs
