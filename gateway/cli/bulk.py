"""`chroma-sync-gateway bulk-cancel`: call a running gateway's bulk-cancel route.

The team key comes from `$CHROMA_SYNC_GATEWAY_KEY` only, never from the command line (where
`ps` and shell history would show it). One line per invocation goes to stdout, then a summary;
a progress line goes to stderr while the gateway works.

Exit status: 0 when every matched invocation ended `cancelled` or `not_cancelable` (for a dry
run: every one `would_cancel`), 1 otherwise (an error answer included), 2 on usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any, TextIO

import httpx

from gateway import __version__

# The spec's, as in gateway.cancel.bulk, which is not imported: it brings the whole server (~1.5 s).
ROUTE = "/gateway/v1/bulk-cancel"
MAX_LIMIT = 10_000
ENV_KEY = "CHROMA_SYNC_GATEWAY_KEY"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DONE = frozenset({"cancelled", "not_cancelable"})
DRY_DONE = frozenset({"would_cancel"})
PROGRESS_SECONDS = 1.0
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


def run(
    *, url: str, source: str | None, database: str | None, dry_run: bool, limit: int | None,
    env: Mapping[str, str], out: TextIO, err: TextIO,
) -> int:
    def usage(message: str) -> int:
        print(f"bulk-cancel: {message}", file=err)
        return EXIT_USAGE

    key = env.get(ENV_KEY, "").strip()
    if not key:
        return usage(f"set ${ENV_KEY} to the team key (it is never taken from the command line)")
    target = urllib.parse.urlsplit(url)
    if target.scheme not in ("http", "https") or not target.hostname:
        return usage(f"--url must be the gateway's http:// or https:// URL, got {url!r}")
    if source is not None and not _UUID.fullmatch(source):
        return usage(f"--source must be a UUID (8-4-4-4-12 hex digits), got {source!r}")
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        return usage(f"--limit must be from 1 to {MAX_LIMIT}, got {limit}")
    body: dict[str, Any] = {"source_id": source} if source is not None else {
        "database_name": database}
    if dry_run:
        body["dry_run"] = True
    if limit is not None:
        body["limit"] = limit
    endpoint = url.rstrip("/") + ROUTE
    what = f"source {source}" if source is not None else f"database {database!r}"
    try:
        response = asyncio.run(_call(endpoint, key, body, what, dry_run, err))
    except httpx.HTTPError as exc:
        print(f"bulk-cancel: could not reach the gateway at {url}: {type(exc).__name__}",
              file=err)
        return EXIT_FAILURE
    return _report(response, dry_run, out, err)


async def _call(
    endpoint: str, key: str, body: dict[str, Any], what: str, dry_run: bool, err: TextIO
) -> httpx.Response:
    # No read timeout: a batch of 10,000 takes as long as it takes; Ctrl-C stops waiting.
    # Proxies from the environment are ignored: the key goes to the gateway and nowhere else.
    timeout = httpx.Timeout(connect=10.0, read=None, write=10.0, pool=10.0)
    headers = {"authorization": f"Bearer {key}",
               "user-agent": f"chroma-sync-gateway-cli/{__version__}"}
    async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
        request = asyncio.ensure_future(client.post(endpoint, json=body, headers=headers))
        progress = asyncio.ensure_future(_progress(what, dry_run, err))
        try:
            return await request
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress


async def _progress(what: str, dry_run: bool, err: TextIO) -> None:
    """One line on stderr while the gateway lists and cancels, rewritten in place on a
    terminal; elsewhere (a log) a line every ten seconds."""
    verb = "listing (dry run)" if dry_run else "listing and cancelling"
    started = time.monotonic()
    tty = err.isatty()
    print(f"bulk-cancel: {verb} the pending invocations of {what} ...", file=err,
          end="" if tty else "\n", flush=True)
    last_note = 0.0
    try:
        while True:
            await asyncio.sleep(PROGRESS_SECONDS)
            elapsed = time.monotonic() - started
            if tty:
                print(f"\rbulk-cancel: {verb} the pending invocations of {what} ... "
                      f"{elapsed:.0f} s", file=err, end="", flush=True)
            elif elapsed - last_note >= 10:
                last_note = elapsed
                print(f"bulk-cancel: still waiting ({elapsed:.0f} s)", file=err, flush=True)
    finally:
        if tty:
            print(file=err, flush=True)


def _report(response: httpx.Response, dry_run: bool, out: TextIO, err: TextIO) -> int:
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code != 200:
        if isinstance(answer, dict) and isinstance(answer.get("error"), str):
            detail = f"{answer['error']}: {answer.get('message', '')}"
        else:
            detail = "no ErrorResponse"
        print(f"bulk-cancel: the gateway answered {response.status_code} ({detail})", file=err)
        return EXIT_FAILURE
    results = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(answer, dict) or not isinstance(results, list):
        print("bulk-cancel: the gateway's answer is not a bulk-cancel result", file=err)
        return EXIT_FAILURE
    wanted = DRY_DONE if dry_run else DONE
    all_done = True
    for item in results:
        item = item if isinstance(item, dict) else {}
        outcome = item.get("outcome")
        all_done = all_done and outcome in wanted
        status = item.get("status")
        print(f"{item.get('invocation_id')}  {outcome}"
              f"  {status if status is not None else '-'}  {item.get('error') or ''}".rstrip(),
              file=out)
    counts = answer.get("counts")
    counts = counts if isinstance(counts, dict) else {}
    # Out-of-scope invocations are counted but not listed: the counts decide too.
    all_done = all_done and all(outcome in wanted for outcome, n in counts.items() if n)
    summary = ", ".join(f"{outcome} {n}" for outcome, n in counts.items()) or "nothing to do"
    print(f"batch {answer.get('batch_id')}{' (dry run)' if dry_run else ''}: "
          f"matched {answer.get('matched')}: {summary}", file=out)
    if answer.get("truncated"):
        print("bulk-cancel: more invocations matched than --limit; run it again for the rest",
              file=err)
    return EXIT_OK if all_done else EXIT_FAILURE
