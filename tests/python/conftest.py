import sys
import threading

import pytest


@pytest.fixture
def unraisable():
    """Collect what reaches sys.unraisablehook during the test."""
    seen = []
    lock = threading.Lock()
    old = sys.unraisablehook

    def hook(info):
        with lock:
            seen.append(info)

    sys.unraisablehook = hook
    try:
        yield seen
    finally:
        sys.unraisablehook = old
