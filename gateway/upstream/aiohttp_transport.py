"""The aiohttp transport under httpx (`upstream.transport = "aiohttp"`).

Imported only when configured: aiohttp alone costs about a quarter of a second of start-up and
several MiB of memory, which the default (native) transport doesn't need. What upstream.py
must know of aiohttp's exceptions to map them is here too.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from gateway.config.model import UpstreamConfig

ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError,)


def transport(config: UpstreamConfig, context: ssl.SSLContext) -> httpx.AsyncBaseTransport:
    return AiohttpTransport(client=lambda: _session(config, context))


def _session(config: UpstreamConfig, context: ssl.SSLContext) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        ssl=context, limit=config.max_connections, keepalive_timeout=30.0, ttl_dns_cache=60
    )
    session = aiohttp.ClientSession(
        connector=connector,
        # aiohttp would otherwise add accept-encoding, and content-type: application/octet-stream
        # on a body-less PUT; the header allowlist names neither.
        skip_auto_headers=("Accept-Encoding", "Content-Type"),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        raise_for_status=False,
    )
    # aiohttp silently re-sends an idempotent request (PUT included) once when the connection
    # drops, even after the request has left: one audited attempt would become two cancels, and
    # the caller could get the retry's 412 for an invocation the first request did cancel.
    # There is no public switch; aiohttp's own test client turns it off the same way.
    session._retry_connection = False
    return session


def never_sent(chain: Sequence[BaseException]) -> bool | None:
    """For an aiohttp failure: whether the request never left; None when aiohttp isn't in it.

    httpx-aiohttp maps most aiohttp connection errors (a dropped kept-alive connection
    included) to `httpx.ConnectTimeout`, so aiohttp's own exception, the cause, decides.
    """
    if not any(isinstance(e, aiohttp.ClientError) for e in chain):
        return None
    return any(
        isinstance(e, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
        for e in chain
    )


def kind(exc: BaseException) -> str | None:
    """A short name for an aiohttp failure (the innermost cause), or None."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed or malformed response"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return "malformed response"
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return "connect timeout"
    return None
