"""nonlocal_keras: the Keras 3 backend (arrives with issue 6)."""
