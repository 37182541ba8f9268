"""nonlocal_torch: the PyTorch backend (arrives with issue 5)."""
