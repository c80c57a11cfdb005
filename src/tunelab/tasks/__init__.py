"""Tasks: one module each, the same shape: a config dataclass, ``run_*()``, a result."""
