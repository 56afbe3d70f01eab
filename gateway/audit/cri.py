"""Kubernetes container log lines (the CRI logging format), unwrapped back into audit lines.

The container runtime writes each line a container prints as

    <RFC 3339 time> <stdout|stderr> <tag> <text>

where the tag is `F` (full: the text ends a line) or `P` (partial: the runtime split a long
line, 16 KiB by default, and the text goes on in the next entry of the same stream), possibly
followed by `:`-separated extra tags. A line the container printed is the texts of its P entries
and the F entry that ends it, joined, plus the newline. `stderr` entries are skipped: the audit
mirror is on stdout, and the operational log on stderr interleaves with it.

Lines that are not CRI lines (a plain audit record starts with `{`) pass through unchanged, so
one reader takes files, archives and container logs alike. A P run that never ends comes out
without a newline: the verifier then names it a truncated line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

_CRI = re.compile(
    rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)) "
    rb"(stdout|stderr) ([PF])(?::[^ \n]*)? ?"
)


def unwrap(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """Each audit line (with its newline, when it has one) and the number of the input line it
    starts on (1-based)."""
    partial: list[bytes] = []
    partial_start = 0
    for number, raw in enumerate(lines, 1):
        match = _CRI.match(raw) if raw[:1].isdigit() else None
        if match is None:
            yield number, raw
            continue
        stream, tag = match[2], match[3]
        if stream == b"stderr":
            continue
        text = raw[match.end():]
        if not partial:
            partial_start = number
        if not text.endswith(b"\n"):
            partial.append(text)  # the entry itself was cut: so is the line it carries
            break
        partial.append(text[:-1])
        if tag == b"F":
            yield partial_start, b"".join(partial) + b"\n"
            partial = []
    if partial:
        yield partial_start, b"".join(partial)
