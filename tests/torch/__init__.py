"""Tests of the PyTorch backend, nonlocal_torch."""
