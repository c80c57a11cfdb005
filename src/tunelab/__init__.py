"""tunelab: how far does a pretrained transformer get on your classification data?

    import tunelab
    result = tunelab.probe(tunelab.ProbeConfig(model="minilm", data=tunelab.DataConfig(dataset="rotten_tomatoes")))

Every registered task is a function here (``tunelab.probe``, ``tunelab.finetune``,
``tunelab.zeroshot``, ``tunelab.clip_finetune``, and any task added with
``tunelab.register_task``), called with its config and ``out=``.
"""
from tunelab.core.registry import all_tasks
from tunelab.tasks.lifecycle import run_task

__version__ = "0.1.0"

from tunelab.core.config import DataConfig, RuntimeConfig, TrackingConfig  # noqa: E402
from tunelab.core.errors import TunelabError  # noqa: E402
from tunelab.core.registry import Task, register_task  # noqa: E402

# Names that import torch, transformers or scikit-learn load on first use, so that
# `import tunelab` and `tunelab --help` stay fast.
_LAZY = {
    "RunResult": ("tunelab.tasks.contract", "RunResult"),
    "Outcome": ("tunelab.tasks.contract", "Outcome"),
    "Prepared": ("tunelab.tasks.contract", "Prepared"),
    "RunContext": ("tunelab.tasks.contract", "RunContext"),
    "run_task": ("tunelab.tasks.lifecycle", "run_task"),
    "predict": ("tunelab.serve.predict", "predict"),
    "Prediction": ("tunelab.serve.predict", "Prediction"),
    "load_predictor": ("tunelab.serve.predict", "load_predictor"),
    "Predictor": ("tunelab.serve.predict", "Predictor"),
    "export_onnx": ("tunelab.serve.export", "export_onnx"),
    "ProbeConfig": ("tunelab.tasks.probe", "ProbeConfig"),
    "FinetuneConfig": ("tunelab.tasks.finetune", "FinetuneConfig"),
    "ZeroshotConfig": ("tunelab.tasks.zeroshot", "ZeroshotConfig"),
    "ClipFinetuneConfig": ("tunelab.tasks.clip_finetune", "ClipFinetuneConfig"),
    "TrainConfig": ("tunelab.training.config", "TrainConfig"),
    "LoraConfig": ("tunelab.training.config", "LoraConfig"),
}


def _task_function(task):
    def run(config, out=None, overwrite: bool = False, resume: bool = False, argv=None):
        return run_task(task, config, out=out, overwrite=overwrite, resume=resume, argv=argv)

    run.__name__ = task.api_name
    run.__doc__ = f"tunelab {task.name}: {task.summary}. Returns a RunResult."
    return run


def __getattr__(name):
    """Load a lazy name once and keep it, so every later access gives the same object
    (no submodule shares a public function's name: ``tunelab.predict`` stays a function)."""
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value

    for task in all_tasks().values():
        if task.api_name == name:
            return _task_function(task)
    raise AttributeError(f"module 'tunelab' has no attribute {name!r}")


__all__ = ["DataConfig", "RuntimeConfig", "TrackingConfig", "TunelabError", "Task", "register_task", "__version__",
           "probe", "finetune", "zeroshot", "clip_finetune", *_LAZY]
