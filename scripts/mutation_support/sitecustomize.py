"""Under scripts/mutation only (on PYTHONPATH there): gateway processes that a test starts report
which mutated functions they ran, so that end-to-end tests count for those functions too.

mutmut 3 learns which tests exercise a function by recording, in its own process, the calls a
test makes; a gateway started by `tests.harness` runs in a child process, where that record is
lost. Here every such call is also appended (at most once per 50 ms per function) to the file
named by `GATEWAY_MUTATION_HITS`, and `gateway_mutation_hits` (a pytest plugin) hands the names
to mutmut at the end of each test.
"""

from __future__ import annotations

import os

_HITS = os.environ.get("GATEWAY_MUTATION_HITS")

if _HITS:
    import contextlib
    import time

    from mutmut.mutation import trampoline

    _original = trampoline.record_trampoline_hit
    _last: dict[str, float] = {}
    _fd = os.open(_HITS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _record(name: str, caller: str | None = None) -> None:
        with contextlib.suppress(Exception):  # a child process has no mutmut state to keep
            _original(name, caller=caller)
        now = time.monotonic()
        if now - _last.get(name, -1.0) > 0.05:
            _last[name] = now
            os.write(_fd, (name + "\n").encode())  # one short O_APPEND write: never interleaved

    trampoline.record_trampoline_hit = _record  # type: ignore[assignment]
