"""Tasks: one module each, the same shape: a config dataclass, ``prepare`` and ``execute``,
and the ``Task`` that registers them (see tunelab.core.registry); the lifecycle that
runs any of them, evaluates its splits and writes its run directory."""
