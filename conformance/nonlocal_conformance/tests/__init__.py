"""The conformance checks; run with ``pytest conformance --backend=NAME`` (see plugin)."""
