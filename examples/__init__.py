"""Examples for tt_keras (run them as modules from the repository root)."""
