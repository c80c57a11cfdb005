"""Serving finished runs: the predict and export commands."""
