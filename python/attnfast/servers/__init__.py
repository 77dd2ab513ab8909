"""attnfast's HTTP servers, and what they share: HTTP statuses chosen by exception class
(:mod:`attnfast.servers.errors`) and request bodies read under a size limit
(:mod:`attnfast.servers.body`)."""
