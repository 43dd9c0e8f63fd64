"""The ``edgefleet`` command line and the demo that ties the three parts together."""

from protocol.version import __version__

__all__ = ["__version__"]
