"""``sagaflow.__version__``: read from the installed distribution's metadata.

``pyproject.toml`` is the one place the version is written; a checkout that was
never installed (not even ``pip install -e .``) reports ``0+unknown``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("sagaflow")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
