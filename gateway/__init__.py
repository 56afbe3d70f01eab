"""chroma-sync-gateway: an authenticating, auditing gateway for Chroma Sync cancellations."""

__version__ = "0.3.0"
