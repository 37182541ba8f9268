"""The examples in nonlocal_torch's docstrings run and say what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "nonlocal_torch",
    "nonlocal_torch.block",
    "nonlocal_torch.functional",
    "nonlocal_torch.conformance",
    "nonlocal_torch.strategies",
    "nonlocal_torch.formulations",
    "nonlocal_torch.sidebyside",
    "nonlocal_torch.insert",
    "nonlocal_torch.attention",
    "nonlocal_torch.demo",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0
