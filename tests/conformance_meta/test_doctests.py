"""The examples in nonlocal_conformance's docstrings run and say what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "nonlocal_conformance.adapter",
    "nonlocal_conformance.backends",
    "nonlocal_conformance.backward",
    "nonlocal_conformance.dtypes",
    "nonlocal_conformance.mutants",
    "nonlocal_conformance.numpy_adapter",
    "nonlocal_conformance.plugin",
    "nonlocal_conformance.report",
    "nonlocal_conformance.strategies",
    "nonlocal_conformance.suite",
    "nonlocal_conformance.summary",
    "nonlocal_conformance.trace",
    "nonlocal_conformance.vectors",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0
