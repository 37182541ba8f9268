"""Settings for the project's own tests: nothing is written into the working tree.

Hypothesis keeps its example database and caches under ``build/hypothesis`` (not
``.hypothesis/`` in the current directory); the variable reaches the suites the tests start in
subprocesses too.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(ROOT / "build" / "hypothesis"))
