"""Both ways of running the audit tools' hot loops: compiled (`gateway.audit.speedups`, when
this install built it) and in Python. A test that asks for `each_way` runs once per way."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.audit import compiled

BUILT = compiled.speedups


@pytest.fixture(params=["compiled", "python"])
def each_way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
             ) -> Iterator[str]:
    if request.param == "compiled" and BUILT is None:
        pytest.skip("gateway.audit.speedups is not built here (no C compiler or OpenSSL "
                    "headers)")
    monkeypatch.setattr(compiled, "speedups", BUILT if request.param == "compiled" else None)
    yield request.param
