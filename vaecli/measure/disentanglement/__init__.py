"""Disentanglement metrics on codes of data with known factors (disentanglement_lib's definitions)."""
