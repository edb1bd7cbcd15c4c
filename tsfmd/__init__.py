"""tsfmd: one daemon that serves time-series foundation models to TDengine's TDgpt."""
from tsfmd.version import __version__

__all__ = ["__version__"]
