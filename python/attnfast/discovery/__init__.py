"""Discovery: clustering fingerprints into "attention programs" (the seed's discovery job),
the pickle-free artifacts it writes, and the online classifier that reads them.

``run_discovery`` (``attnfast discover``) writes a run folder; ``SidecarClassifier`` and
``classify_arrow`` read it (docs/discovery.md).
"""

from __future__ import annotations

from attnfast.discovery.arrow import ArrowClassifier, classify_arrow
from attnfast.discovery.classifier import SidecarClassifier
from attnfast.discovery.job import DiscoveryError, DiscoveryResult, run_discovery

__all__ = [
    "ArrowClassifier",
    "DiscoveryError",
    "DiscoveryResult",
    "SidecarClassifier",
    "classify_arrow",
    "run_discovery",
]
