"""Offline training of the default models (not part of the product: nodes only load what it writes)."""
