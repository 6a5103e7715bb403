"""The file system names the tests create and clean up, written once.

A zerobuffer buffer called ``name`` is a segment, two named semaphores and
a lock file while it exists; a fastipc object called ``name`` is a segment
with its kind's prefix. Tests import these (pytest puts this folder on
sys.path) rather than spelling the paths out again.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

FASTIPC_PREFIXES = ("__pyfastipc_event_", "__pyfastipc_mutex_",
                    "__pyfastipc_sema_")


def zerobuffer_paths(name: str) -> list[str]:
    """Every file system name a buffer called name has while it exists."""
    return [f"/dev/shm/{name}", f"/dev/shm/sem.sem-w-{name}",
            f"/dev/shm/sem.sem-r-{name}", f"/tmp/zerobuffer/{name}.lock"]


def channel_paths(channel: str) -> list[str]:
    """The names of a duplex channel: its request and response buffers."""
    return (zerobuffer_paths(f"{channel}_request")
            + zerobuffer_paths(f"{channel}_response"))


def fastipc_paths(name: str,
                  prefixes: Iterable[str] = FASTIPC_PREFIXES) -> list[str]:
    """The segments of the fastipc objects called name."""
    return [f"/dev/shm/{prefix}{name}" for prefix in prefixes]


def unlink_all(paths: Iterable[str]) -> None:
    """Remove what a test may have left behind; what is gone is fine."""
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
