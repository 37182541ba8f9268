"""A Griffe extension: read the house-style ``Example:`` docstring section as ``Examples:``.

Griffe's Google-style parser knows only the plural title; under the singular one the doctest
lines would render as Markdown text (``>>>`` quotes, ``[...]`` outputs taken for links)
instead of highlighted code. Renaming the title when each object is loaded lets the source
keep the house style. Used by ``mkdocs.yml`` (mkdocstrings' ``extensions`` option).

Example:
    >>> ExampleSections.rename("Summary.\\n\\nExample:\\n    >>> 1 + 1\\n    2\\n")
    'Summary.\\n\\nExamples:\\n    >>> 1 + 1\\n    2\\n'
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE_TITLE = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section titles to ``Examples:`` in every loaded docstring."""

    @staticmethod
    def rename(text: str) -> str:
        """`text` with each line that is exactly ``Example:`` (any indent) made plural."""
        return _EXAMPLE_TITLE.sub(r"\g<indent>Examples:", text)

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of each object as Griffe creates it (parsing is lazy)."""
        if obj.docstring is not None:
            obj.docstring.value = self.rename(obj.docstring.value)
