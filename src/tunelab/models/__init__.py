"""Models: resolving and loading them, shipped architectures, the bi-encoder, model cards,
parameter counts."""
