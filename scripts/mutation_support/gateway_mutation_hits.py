"""pytest plugin for scripts/mutation: the functions a test's gateway processes ran (written by
this folder's sitecustomize) count as run by that test, for mutmut's choice of tests."""

from __future__ import annotations

import os
from typing import Any

import pytest

_offset = 0


@pytest.hookimpl(tryfirst=True)  # before mutmut's own teardown hook takes the test's calls
def pytest_runtest_teardown(item: Any, nextitem: Any) -> None:
    global _offset
    path = os.environ.get("GATEWAY_MUTATION_HITS")
    if not path or not os.path.exists(path):
        return
    with open(path, "rb") as hits:
        hits.seek(_offset)
        new = hits.read()
    complete = new[: new.rfind(b"\n") + 1]  # a line still being written waits for next time
    _offset += len(complete)
    from mutmut.state import state

    state()._stats.update(line.decode() for line in complete.splitlines() if line)
