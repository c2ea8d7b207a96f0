"""Whether the Hugging Face hub can be reached, and working without it: on an offline machine the hub's
libraries retry every request for about a minute before they fall back to their caches or fail; asking once,
with a short timeout, lets a cached model or dataset load at once and a missing one fail at once."""

from __future__ import annotations

import contextlib
import functools
import urllib.error
import urllib.request
from typing import Iterator


@functools.lru_cache(maxsize=None)
def hub_reachable(endpoint: str | None = None) -> bool:
    """Whether the hub (``endpoint``, default ``$HF_ENDPOINT`` or huggingface.co) answers an HTTP request within
    5 s, through the proxy the environment names; False under ``HF_HUB_OFFLINE``, and False for an answer that
    serves no files: a proxy asking for credentials (407) or a server error (5xx: a proxy that cannot reach the
    hub, or the hub down). Any other status counts as an answer (a mirror's root may be 404). Asked once per
    process and endpoint."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint or constants.ENDPOINT, method="HEAD"), timeout=5):
            pass
    except urllib.error.HTTPError as err:
        return err.code != 407 and err.code < 500
    except (OSError, ValueError):  # no route, no name, refused, timed out
        return False
    return True


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """The hub's libraries (huggingface_hub, and datasets where installed) in offline mode for the duration:
    caches only, no request."""
    from huggingface_hub import constants

    settings = [(constants, "HF_HUB_OFFLINE")]
    with contextlib.suppress(ImportError):
        import datasets.config

        settings.append((datasets.config, "HF_HUB_OFFLINE"))
    saved = [getattr(module, name) for module, name in settings]
    for module, name in settings:
        setattr(module, name, True)
    try:
        yield
    finally:
        for (module, name), value in zip(settings, saved):
            setattr(module, name, value)
