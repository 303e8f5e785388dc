"""minerwatch: catch cryptomining and other compute hijacking by learning each host's normal.

The package's rooms live in the repository's own folders (``features/``, ``baseline/``,
``service/``, ``benchmarks/``) and install as ``minerwatch.features`` and so on, so nothing
generic lands in site-packages.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("minerwatch")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
