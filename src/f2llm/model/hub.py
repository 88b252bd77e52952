"""Where a `from_pretrained` name points: a local folder, the local hub cache, or the hub."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from f2llm.errors import UserError


class PretrainedNotFound(UserError, FileNotFoundError):
    """A model name that is neither a local folder nor reachable; the message says what to do."""


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (`HF_ENDPOINT`, default huggingface.co) accepts a connection
    on port 443 within `timeout` seconds."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def hub_offline() -> bool:
    """Whether `HF_HUB_OFFLINE` is set (1, true, yes or on): the hub client makes no calls."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def resolve_pretrained(name_or_path: str | Path, setting: str = "model.pretrained") -> str:
    """`name_or_path` if it can be loaded, else a `PretrainedNotFound` within seconds.

    A local folder is used as is; a hub name is fine when it is in the local cache or the hub
    answers. Without this check, `from_pretrained` of an uncached name on a machine without a
    network retries for about a minute before failing with a message about connections.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise PretrainedNotFound(f"{setting}={text}: not a folder")
        if not (path / "config.json").exists():
            raise PretrainedNotFound(f"{setting}={text}: the folder has no config.json")
        return str(path)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise PretrainedNotFound(f"{setting}={text}: no such folder")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(text, "config.json")
        if isinstance(cached, str):
            return text
    except Exception:  # an invalid repo id: fall through to the message below
        pass
    if hub_offline() or not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face hub is unreachable"
        raise PretrainedNotFound(
            f"{setting}={text} is not a local folder and not in the local Hugging Face cache, "
            f"and {why}. Download it where there is a network (`huggingface-cli download "
            f"{text} --local-dir <folder>`) and set {setting}=<folder>."
        )
    return text
