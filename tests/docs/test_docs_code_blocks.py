"""Every ``python`` block of every documentation page runs, in order, as a reader would.

Each page runs in a fresh interpreter (Keras reads KERAS_BACKEND once per process), from a
temporary working directory. The Keras quick start runs once per Keras backend. A page is
skipped only while the backend API it shows has not landed (see ``blocks.missing_requirement``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.blocks import SKIP_EXIT, parse_blocks, python_blocks

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RUNNER = Path(__file__).with_name("blocks.py")
KERAS_BACKENDS = ("tensorflow", "jax", "torch")

# page -> (the API it needs, the Keras backends to run it under; None: not a Keras page)
REQUIREMENTS: dict[str, tuple[str | None, tuple[str, ...] | None]] = {
    "quickstart-torch.md": ("nonlocal_torch.NonLocalBlock", None),
    "quickstart-keras.md": ("nonlocal_keras.NonLocalBlock", KERAS_BACKENDS),
}
# Pages that must keep executable examples: a page losing its blocks would pass vacuously.
MUST_HAVE_BLOCKS = {
    "operator.md": 2,
    "quickstart-numpy.md": 5,
    "quickstart-torch.md": 4,
    "quickstart-keras.md": 3,
    "conformance.md": 2,
}


def _cases():
    for page in sorted(DOCS.rglob("*.md")):
        if not python_blocks(page):
            continue
        name = page.relative_to(DOCS).as_posix()
        requires, backends = REQUIREMENTS.get(name, (None, None))
        for backend in backends or (None,):
            label = name if backend is None else f"{name}[keras-{backend}]"
            yield pytest.param(page, requires, backend, id=label)


@pytest.mark.parametrize(("page", "requires", "keras_backend"), list(_cases()))
def test_page_code_runs(page: Path, requires, keras_backend, tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if keras_backend is not None:
        env["KERAS_BACKEND"] = keras_backend
    command = [sys.executable, str(RUNNER), str(page)]
    if requires:
        command += ["--requires", requires]
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    if result.returncode == SKIP_EXIT:
        pytest.skip(result.stderr.strip())
    assert result.returncode == 0, f"{page.name} failed:\n{result.stdout}\n{result.stderr}"
    assert f"{len(python_blocks(page))} python blocks ran" in result.stdout


@pytest.mark.parametrize(("name", "minimum"), sorted(MUST_HAVE_BLOCKS.items()))
def test_pages_keep_their_examples(name: str, minimum: int):
    assert len(python_blocks(DOCS / name)) >= minimum, f"docs/{name} lost its python examples"


def test_block_line_numbers_are_the_pages():
    text = "# T\n\n```python\na = 1\nb = 2\n```\n\n````markdown\n```python\nnot run\n```\n````\n"
    blocks = parse_blocks(text)
    assert [(b.line, b.language) for b in blocks] == [(4, "python"), (9, "markdown")]
    assert blocks[0].code == "a = 1\nb = 2\n"
    assert "```python" in blocks[1].code


def test_a_failing_block_fails_with_the_page_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Intro\n\n```python\nx = 1\nassert x == 2, 'boom'\n```\n")
    result = subprocess.run(
        [sys.executable, str(RUNNER), str(page)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert f'File "{page}", line 5' in result.stderr and "boom" in result.stderr


def test_a_missing_backend_skips_but_a_broken_one_fails(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```python\npass\n```\n")
    run = lambda requires: subprocess.run(  # noqa: E731
        [sys.executable, str(RUNNER), str(page), "--requires", requires],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert run("no_such_backend_module.Block").returncode == SKIP_EXIT
    assert run("json.NoSuchClass").returncode == SKIP_EXIT
    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text("from . import missing_part\n")
    broken = run("brokenpkg.Block")
    assert broken.returncode == 1 and "missing_part" in broken.stderr
