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


def pytest_sessionstart(session):
    """In the sanitizer run, make sure the instrumented extension is the one
    under test, not an ordinary build that happens to be installed."""
    import os
    site = os.environ.get("PYTHONPATH", "")
    if os.environ.get("DK_SANITIZER_RUN") == "1":
        import dispatchkit._dk as ext
        assert site and ext.__file__.startswith(site), (ext.__file__, site)
