"""An archive URL's store: a folder, or S3 through the `s3` extra, imported only when used."""

from __future__ import annotations

from gateway.audit.archive.location import ArchiveUrl, parse
from gateway.audit.archive.store import FileStore, Store, StoreError


def open_store(text: str | ArchiveUrl) -> Store:
    """The store for an archive URL. Raises BadArchiveUrl, or StoreError when the s3 client
    (the `s3` extra) is not installed."""
    url = parse(text) if isinstance(text, str) else text
    if url.scheme == "file":
        return FileStore(url)
    try:
        from gateway.audit.archive.s3 import S3Store  # only when used
    except ImportError:
        raise StoreError(
            "s3:// archives need the s3 extra: pip install 'chroma-sync-gateway[s3]'"
        ) from None
    return S3Store(url)
