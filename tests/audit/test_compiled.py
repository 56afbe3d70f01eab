"""`gateway.audit.compiled`: the compiled loops when this install has them, None when not,
and the tools the same either way."""

from __future__ import annotations

import importlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import gateway.audit
from gateway.audit import compiled
from gateway.audit.query import Filters
from gateway.audit.verify_fleet import run_query
from tests.audit.conftest import BUILT
from tests.audit.signed_logs import MAC_KEY, ChainBuilder


@pytest.fixture
def unbuilt(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As on a machine with no C compiler: importing the compiled module fails."""
    monkeypatch.setitem(sys.modules, "gateway.audit.speedups", None)  # ImportError on import
    monkeypatch.delattr(gateway.audit, "speedups", raising=False)
    importlib.reload(compiled)
    yield
    monkeypatch.undo()
    importlib.reload(compiled)


@pytest.mark.usefixtures("unbuilt")
def test_without_the_compiled_module_speedups_is_none() -> None:
    assert compiled.speedups is None


def test_the_module_reloaded_finds_what_this_install_built() -> None:
    importlib.reload(compiled)
    assert compiled.speedups is BUILT


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="only CI must have a C compiler")
def test_ci_builds_the_compiled_loops() -> None:
    # What CI proves must include them: a build that silently went without would hide a loop
    # that is never run.
    assert BUILT is not None
    assert {"plain_lines", "extend_peaks", "csv_rows"} <= set(dir(BUILT))


def test_a_query_says_the_same_without_the_compiled_loops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builder = ChainBuilder(signer=None)
    builder.cancels(40, checkpoint_every=9)
    log = builder.write(tmp_path / "audit.jsonl")
    key = tmp_path / "hmac.key"
    key.write_bytes(MAC_KEY)

    def query() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = run_query([str(log)], Filters(team="search"), "csv", [str(key)], False, 1, out,
                         err)
        return code, out.getvalue(), err.getvalue()

    with_them = query()
    monkeypatch.setattr(compiled, "speedups", None)
    assert query() == with_them
    assert with_them[0] == 0 and with_them[1].count("\r\n") == 1 + 14


def test_the_gateway_never_loads_the_compiled_module() -> None:
    # The writer appends one leaf at a time: the audit tools' loops are not the sidecar's.
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, gateway.server.app, gateway.audit.writer, "
         "gateway.audit.chain_tree; print(sorted(m for m in sys.modules "
         "if m.startswith('gateway.audit.')))"],
        capture_output=True, text=True, check=True).stdout
    assert "gateway.audit.merkle" in loaded
    assert "gateway.audit.speedups" not in loaded and "gateway.audit.compiled" not in loaded
