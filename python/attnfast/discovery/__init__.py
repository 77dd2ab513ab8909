"""Discovery: clustering fingerprints into "attention programs" (the seed's discovery job),
the pickle-free artifacts it writes, and the online classifier that reads them.

>>> from attnfast.discovery import run_discovery, SidecarClassifier  # doctest: +SKIP
"""

from __future__ import annotations

from attnfast.discovery.job import DiscoveryError, DiscoveryResult, run_discovery

__all__ = ["DiscoveryError", "DiscoveryResult", "run_discovery"]
