"""Tests of the conformance suite itself (run by ``pytest tests``)."""
