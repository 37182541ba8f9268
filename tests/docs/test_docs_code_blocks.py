"""Every ``python`` block of every documentation page runs, in order, as a reader would, and
prints what the page shows it printing (its ``# -> OUTPUT`` comments, see ``blocks``).

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

from tests.docs import blocks as blocks_module
from tests.docs.blocks import (
    SKIP_EXIT,
    expected_outputs,
    parse_blocks,
    python_blocks,
    unchecked_prints,
)

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RUNNER = Path(__file__).with_name("blocks.py")
KERAS_BACKENDS = ("tensorflow", "jax", "torch")

# page -> (the API it needs, the Keras backends to run it under; None: not a Keras page)
REQUIREMENTS: dict[str, tuple[str | None, tuple[str, ...] | None]] = {
    "quickstart-torch.md": ("nonlocal_torch.NonLocalBlock", None),
    "quickstart-keras.md": ("nonlocal_keras.NonLocalBlock", KERAS_BACKENDS),
    # Torch and Keras side by side: Keras on PyTorch, so one framework is imported.
    "checkpoints.md": ("nonlocal_torch.NonLocalBlock", ("torch",)),
    "export.md": ("nonlocal_torch.export_onnx", None),
    # Torch and Keras side by side, as checkpoints.md.
    "insertion.md": ("nonlocal_torch.insert_nonlocal", ("torch",)),
}
# Pages that must keep executable examples: a page losing its blocks would pass vacuously.
MUST_HAVE_BLOCKS = {
    "operator.md": 2,
    "quickstart-numpy.md": 5,
    "quickstart-torch.md": 4,
    "quickstart-keras.md": 3,
    "conformance.md": 2,
    "checkpoints.md": 6,
    "export.md": 7,
    "insertion.md": 9,
}
# Pages that must keep showing (checked) outputs: losing them would pass vacuously too.
MUST_SHOW_OUTPUTS = {
    "quickstart-numpy.md": 8,
    "quickstart-torch.md": 6,
    "quickstart-keras.md": 6,
    "conformance.md": 1,
    "checkpoints.md": 7,
    "export.md": 20,
    "insertion.md": 12,
}


def _shown_outputs(page: Path) -> int:
    return sum(len(expected_outputs(block)) for block in python_blocks(page))


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
    blocks, shown = len(python_blocks(page)), _shown_outputs(page)
    assert f"{blocks} python blocks ran, {shown} shown outputs checked" in result.stdout


@pytest.mark.parametrize(("name", "minimum"), sorted(MUST_HAVE_BLOCKS.items()))
def test_pages_keep_their_examples(name: str, minimum: int):
    assert len(python_blocks(DOCS / name)) >= minimum, f"docs/{name} lost its python examples"


@pytest.mark.parametrize(("name", "minimum"), sorted(MUST_SHOW_OUTPUTS.items()))
def test_pages_keep_showing_their_outputs(name: str, minimum: int):
    assert _shown_outputs(DOCS / name) >= minimum, f"docs/{name} lost its shown outputs"


@pytest.mark.parametrize("page", sorted(DOCS.rglob("*.md")), ids=lambda p: p.name)
def test_every_print_on_a_page_shows_its_output(page: Path):
    unchecked = [line for b in python_blocks(page) for line in unchecked_prints(b, page)]
    assert unchecked == [], f"{page.name}: print() without a '# -> output' on lines {unchecked}"


def _run_page(tmp_path, text: str) -> subprocess.CompletedProcess:
    page = tmp_path / "page.md"
    page.write_text(text)
    return subprocess.run(
        [sys.executable, str(RUNNER), str(page)], capture_output=True, text=True, timeout=60
    )


def test_a_page_that_shows_a_wrong_output_fails_with_its_line(tmp_path):
    good = "```python\nx = 2\nprint(x, x * 0.5)  # -> 2 1.0\n"
    good += "print(\n    [x] * 9\n)  # -> [2, ...]\n```\n"  # one statement on 3 lines
    result = _run_page(tmp_path, good)
    assert result.returncode == 0, result.stderr
    assert "1 python blocks ran, 2 shown outputs checked" in result.stdout
    lie = _run_page(tmp_path, good.replace("# -> 2 1.0", "# -> 3 1.5"))
    assert lie.returncode == 1
    assert "page.md, line 3: the page shows '3 1.5', the code printed '2 1.0'" in lie.stderr
    misplaced = _run_page(tmp_path, good.replace("[x] * 9\n", "[x] * 9  # -> [2]\n"))
    assert misplaced.returncode == 1 and "must end a top-level statement" in misplaced.stderr


def test_blocks_docstring_examples():
    import doctest

    result = doctest.testmod(blocks_module)
    assert result.attempted > 0 and result.failed == 0


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
