"""The Hugging Face hub, offline when it cannot be reached (weights and tokenizer files).

Why a module of its own: the torch loader and the tokenizer loader both read the hub cache.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator

HUB_HOST = ("huggingface.co", 443)


def hub_reachable() -> bool:
    try:
        with socket.create_connection(HUB_HOST, timeout=3):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def offline_hub_if_unreachable() -> Iterator[None]:
    """Without a network, use the hub cache only: fail in a second, not after 50 s of retries."""
    import huggingface_hub.constants as hub_constants

    saved = hub_constants.HF_HUB_OFFLINE
    if not saved and not hub_reachable():
        hub_constants.HF_HUB_OFFLINE = True
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved
