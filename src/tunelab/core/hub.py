"""Fail fast, with one clear line, when the Hugging Face hub cannot be reached.

huggingface_hub retries unreachable hosts for half a minute before failing with
a long message; a quick socket check answers in milliseconds offline.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

from tunelab.core.errors import TunelabError


def hub_offline_requested() -> bool:
    return any(
        os.environ.get(var, "").lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    )


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    if hub_offline_requested():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_hub(what: str, hint: str) -> None:
    """Raise a one-line error naming ``what`` was wanted and how to do without the hub."""
    if not hub_reachable():
        reason = "offline mode is set" if hub_offline_requested() else "the hub cannot be reached"
        raise TunelabError(f"cannot fetch {what} from the Hugging Face hub ({reason}); {hint}")
