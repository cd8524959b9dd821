"""The simulated world: data sets, corruptions, the shifting camera stream and accuracy bookkeeping (not part of
the product: robots see real cameras)."""
