"""The package version, in one place for dispatchkit and its submodules.

pyproject.toml and meson.build carry the same string; tests/python/
test_packaging.py checks that the three agree with the installed metadata.
"""

__version__ = "0.1.0"
