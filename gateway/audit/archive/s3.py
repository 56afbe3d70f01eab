"""The `s3://BUCKET/PREFIX` store, through obstore (the Rust `object_store` crate).

Settings come from the environment as the AWS SDKs read them: `AWS_ENDPOINT_URL` (or
`AWS_ENDPOINT_URL_S3`), `AWS_REGION` / `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID` /
`AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` +
`AWS_ROLE_ARN`: IRSA), container credentials (EKS Pod Identity) and the instance metadata
service. An `http://` endpoint (an S3-compatible store on a private network) is allowed
because the operator named it.

Every PUT is create-only (`If-None-Match: *`) and carries an `x-amz-checksum-sha256` of its
body with `x-amz-sdk-checksum-algorithm: SHA256`, which a bucket with S3 Object Lock requires
of every PUT (as it would a `Content-MD5`). Reads go through a second client without that
header. obstore raises its own errors, and `FileNotFoundError` for a 404: both are a
`StoreError` here. The client's own retries are short: the uploader retries with its own backoff.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING

import obstore
from obstore import exceptions as obstore_errors
from obstore.store import S3Store as ObstoreS3

from gateway.audit.archive.location import ArchiveUrl
from gateway.audit.archive.store import StoreError

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")
_CODE = re.compile(r"<Code>([A-Za-z0-9.]{1,80})</Code>")
_RETRY: RetryConfig = {
    "max_retries": 2,
    "retry_timeout": timedelta(seconds=20),
    "backoff": {"init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=2), "base": 2},
}


def _client_options(extra_headers: dict[str, str] | None) -> ClientConfig:
    endpoint = next((os.environ[v] for v in _ENDPOINT_VARIABLES if os.environ.get(v)), "")
    options: ClientConfig = {"timeout": "30s", "connect_timeout": "5s"}
    if endpoint.startswith("http://"):
        options["allow_http"] = True
    if extra_headers:
        options["default_headers"] = extra_headers
    return options


def _region() -> str | None:
    # object_store reads AWS_DEFAULT_REGION; the SDKs prefer AWS_REGION.
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


class S3Store:
    def __init__(self, url: ArchiveUrl) -> None:
        self.url = url
        prefix = url.prefix or None
        try:
            region = _region()
            self._writer = ObstoreS3(
                url.bucket, prefix=prefix, checksum_algorithm="SHA256",
                config={"region": region} if region else None,
                client_options=_client_options({"x-amz-sdk-checksum-algorithm": "SHA256"}),
                retry_config=_RETRY,
            )
            self._reader = ObstoreS3(url.bucket, prefix=prefix,
                                     config={"region": region} if region else None,
                                     client_options=_client_options(None), retry_config=_RETRY)
        except (obstore_errors.BaseError, OSError) as exc:
            raise StoreError(f"{url}: {_first_line(exc)}") from None

    def create(self, name: str, data: bytes) -> bool:
        try:
            obstore.put(self._writer, name, data, mode="create")
        except obstore_errors.AlreadyExistsError:
            return False
        except (obstore_errors.BaseError, OSError) as exc:
            raise StoreError(f"PUT {name}: {_first_line(exc)}") from None
        return True

    def read(self, name: str) -> bytes:
        try:
            return bytes(obstore.get(self._reader, name).bytes())
        except (obstore_errors.BaseError, OSError) as exc:
            raise StoreError(f"GET {name}: {_first_line(exc)}") from None

    def names(self, under: str = "") -> Iterator[str]:
        folder = under.rsplit("/", 1)[0] if "/" in under else None
        try:
            for page in obstore.list(self._reader, folder, chunk_size=1000):
                for meta in page:
                    name = meta["path"]
                    if name.startswith(under):
                        yield name
        except (obstore_errors.BaseError, OSError) as exc:
            raise StoreError(f"LIST {self.url}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    """obstore's message, short: its first line, cut, and the S3 error code of the body."""
    whole = str(exc).strip()
    text = whole.splitlines()[0] if whole else type(exc).__name__
    text = text if len(text) <= 300 else text[:300] + "..."
    code = _CODE.search(whole)
    return f"{code[1]}: {text}" if code else text
