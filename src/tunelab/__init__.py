"""tunelab: how far does a pretrained transformer get on your classification data?

    import tunelab
    result = tunelab.probe(tunelab.ProbeConfig(model="minilm", data=tunelab.DataConfig(dataset="rotten_tomatoes")))
"""

__version__ = "0.1.0"

from tunelab.config import DataConfig, RuntimeConfig, TrackingConfig  # noqa: E402
from tunelab.errors import TunelabError  # noqa: E402

# Tasks import torch and transformers: load them on first use so that
# `import tunelab` and `tunelab --help` stay fast.
_LAZY = {
    "probe": ("tunelab.tasks.probe", "run_probe"),
    "ProbeConfig": ("tunelab.tasks.probe", "ProbeConfig"),
    "finetune": ("tunelab.tasks.finetune", "run_finetune"),
    "FinetuneConfig": ("tunelab.tasks.finetune", "FinetuneConfig"),
    "RunResult": ("tunelab.tasks.common", "RunResult"),
    "predict": ("tunelab.predict", "predict"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'tunelab' has no attribute {name!r}")


__all__ = ["DataConfig", "RuntimeConfig", "TrackingConfig", "TunelabError", "__version__", *_LAZY]
