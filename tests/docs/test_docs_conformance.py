"""The conformance page tells the truth: its options exist, its adapter passes the suite.

The page's code blocks themselves run in ``test_docs_code_blocks.py``; here the adapter they
define is saved as a module and the real suite is run on it, exactly as the page tells a
reader to, and the page's option table is compared with the options the plugin registers.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.blocks import parse_blocks
from tests.docs.test_docs_operator import section, table

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "conformance.md").read_text(encoding="utf-8")

needs_suite = pytest.mark.skipif(
    importlib.util.find_spec("nonlocal_conformance.tests") is None,
    reason="the conformance suite (nonlocal_conformance.tests) has not landed yet",
)


def _definitions_only(code: str) -> bool:
    allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)
    return all(isinstance(node, allowed) for node in ast.parse(code).body)


def adapter_module() -> str:
    """The page's "Writing an adapter" blocks that only define things: the reader's module."""
    blocks = parse_blocks(section(PAGE, "Writing an adapter"))
    code = [b.code for b in blocks if b.language == "python" and _definitions_only(b.code)]
    assert len(code) >= 2, "the adapter example lost its implementation or adapter block"
    return "\n\n".join(code)


def _conformance_group(help_text: str) -> str:
    match = re.search(
        r"^non-local block conformance suite:\n(.*?)(?:\n\n|\Z)", help_text, re.S | re.M
    )
    assert match, "the plugin's option group is missing from pytest --help"
    return match[1]


@needs_suite
def test_option_table_lists_exactly_the_plugins_options():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    registered = set(re.findall(r"^  (--[a-z-]+)", _conformance_group(result.stdout), re.M))
    documented = {re.sub(r"`", "", row[0]) for row in table(section(PAGE, "Options"))}
    # --hypothesis-profile belongs to Hypothesis's own plugin; the page documents the profiles.
    assert "--hypothesis-profile" in documented and "--hypothesis-profile" in result.stdout
    assert documented - {"--hypothesis-profile"} == registered


@needs_suite
def test_the_documented_adapter_passes_the_suite(tmp_path):
    (tmp_path / "my_adapter.py").write_text(adapter_module(), encoding="utf-8")
    report = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "pytest", "--pyargs", "nonlocal_conformance",
        "-p", "no:cacheprovider", "-q",
        "--backend=my_adapter:DotProductAdapter", "--dtype=float32",
        "--hypothesis-profile=ci", f"--conformance-report={report}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    data = json.loads(report.read_text())
    assert data["backend"] == "my_adapter:DotProductAdapter"
    assert data["totals"]["failed"] == 0
    assert data["totals"]["passed"] >= 5, "the example adapter should pass real checks"
    skipped = [t for t in data["tests"] if t["outcome"] == "skipped"]
    assert skipped, "the example declares partial support: something must be skipped"
    assert all("declare" in t["detail"] for t in skipped), [
        t["detail"] for t in skipped if "declare" not in t["detail"]
    ][:3]
    # C' > C is declined in build: counted with its reason, never failed.
    declined = {r for t in data["tests"] for r in t["decline_reasons"]}
    assert declined == {"inter_channels > in_channels: the block only reduces the width"}
    assert data["draws"]["declined"] > 0 and data["draws"]["examples"] > 100, data["draws"]


def test_option_table_matches_spec_conformance():
    spec = (ROOT / "spec" / "conformance.md").read_text(encoding="utf-8")
    theirs = {re.match(r"`(--[a-z-]+)", row[0])[1] for row in table(section(spec, "1. Running it"))}
    ours = {row[0].strip("`") for row in table(section(PAGE, "Options"))}
    assert ours == theirs


@needs_suite
def test_every_check_named_on_the_page_exists():
    tests = ROOT / "conformance" / "nonlocal_conformance" / "tests"
    defined = set()
    for path in tests.glob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined |= {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    named = set(re.findall(r"`(test_[a-z_]+)`", section(PAGE, "What it checks")))
    assert len(named) >= 15
    assert sorted(named - defined) == [], "the page names checks the suite does not have"
