"""tunelab: how far does a pretrained transformer get on your classification data?"""

__version__ = "0.1.0"

from tunelab.errors import TunelabError  # noqa: E402


def __getattr__(name):
    # Tasks import torch and transformers; load them on first use so that
    # `import tunelab` and `tunelab --help` stay fast.
    if name in ("probe", "ProbeConfig", "ProbeResult"):
        from tunelab.tasks import probe as _probe

        return {"probe": _probe.run_probe, "ProbeConfig": _probe.ProbeConfig, "ProbeResult": _probe.ProbeResult}[name]
    raise AttributeError(f"module 'tunelab' has no attribute {name!r}")


__all__ = ["TunelabError", "__version__", "probe", "ProbeConfig", "ProbeResult"]
