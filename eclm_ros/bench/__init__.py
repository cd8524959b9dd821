"""The benchmark harness: every method on the same frames, side by side (imports the product, never the reverse)."""
