"""Tasks: one module each, the same shape: a config dataclass, ``prepare`` and ``execute``,
and the ``Task`` that registers them (see tunelab.core.registry)."""
