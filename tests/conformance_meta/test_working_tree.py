"""Running the suite writes nothing into the working directory (Hypothesis's files included)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_the_suite_keeps_hypothesis_files_in_the_user_cache(tmp_path):
    work, cache = tmp_path / "work", tmp_path / "cache"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "HYPOTHESIS_STORAGE_DIRECTORY"}
    env["XDG_CACHE_HOME"] = str(cache)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "nonlocal_conformance", "-q",
         "-p", "no:cacheprovider", "--backend=numpy", "--hypothesis-profile=dev",
         "-k", "test_block_is_the_identity_at_initialisation"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    assert sorted(p.name for p in work.iterdir()) == []
    assert (cache / "nonlocal-conformance" / "hypothesis").is_dir()
