"""Command line and wire contract of the CloudMatrix384 emulator.

`cmx.v1` contains the Python stubs generated from the files in `proto/cmx/v1/`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cmx-emulator")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
