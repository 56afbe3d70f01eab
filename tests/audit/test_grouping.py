"""Many chains' lines, shuffled and duplicated across inputs, sorted out chain by chain."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.audit import grouping
from gateway.audit.grouping import Entry, Grouping, Problem, ordered
from tests.audit.archive.chains import ChainFiles


def chains(tmp_path: Path, count: int, records: int) -> list[ChainFiles]:
    made = []
    for n in range(count):
        log = ChainFiles(tmp_path / f"pod-{n}.jsonl")
        log.add(records - 2)
        log.checkpoint()
        made.append(log)
    return made


def sort_out(lines: list[bytes]) -> tuple[Grouping, dict[str, list[Entry | Problem]]]:
    group = Grouping()
    source = group.source("shuffled")
    for number, line in enumerate(lines, 1):
        group.add(line, source, number)
    spills = group.finish()
    return group, {key: list(ordered(path, key not in group.unsorted))
                   for key, path in spills.items()}


def test_shuffled_duplicated_lines_of_three_chains_come_out_whole_and_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grouping, "RUN_RECORDS", 7)  # sorted in many runs, merged
    logs = chains(tmp_path, 3, 40)
    lines = [line for log in logs for line in log.lines]
    lines += random.Random(1).sample(lines, 30)  # shipped twice
    random.Random(2).shuffle(lines)
    group, result = sort_out(lines)
    try:
        assert set(result) == {log.chain for log in logs}
        for log in logs:
            got = result[log.chain]
            assert all(isinstance(e, Entry) for e in got)
            assert [e.line for e in got if isinstance(e, Entry)] == log.lines
    finally:
        group.close()


def test_the_record_seq_is_read_past_a_nested_one() -> None:
    line = (b'{"chain":"' + b"a" * 32 + b'","event":"audit.chain","previous":{"chain":null,'
            b'"hash":"' + b"0" * 64 + b'","seq":41},"seq":1,"ts":"x"}\n')
    assert grouping.seq_of(line) == 1
    assert grouping.chain_of(line) == "a" * 32
    assert grouping.seq_of(b'{"note":"a \\",\\"seq\\":9"}\n') == 0  # inside a string


def _seq_by_scanning(line: bytes) -> int:
    found = re.findall(rb'[{,]"seq":([0-9]{1,19})[,}]', line)
    return int(found[-1]) if found else 0


@given(st.lists(st.sampled_from([b'{', b'}', b',', b'"seq":', b'"head_seq":', b'7', b'12',
                                 b'"x"', b'\\"seq\\":3', b'-1', b'1.5', b' ', b'"seq"']),
                max_size=12))
def test_the_seq_read_is_the_last_one_a_scan_of_the_line_finds(parts: list[bytes]) -> None:
    line = b"".join(parts)
    assert grouping.seq_of(line) == _seq_by_scanning(line)


@pytest.mark.parametrize("line", [
    b'{"seq":1,"seq":2}', b'"seq":5}', b'{"seq":05,', b'{"seq":1e3}', b'{"seq":' + b"9" * 20 + b'}',
    b'{"head_seq":4,"seq":3}', b'{"a":{"seq":2},"seq":9}\n'])
def test_the_seq_of_awkward_lines_is_the_scans(line: bytes) -> None:
    assert grouping.seq_of(line) == _seq_by_scanning(line)


def test_a_gap_and_a_conflict_are_named(tmp_path: Path) -> None:
    (log,) = chains(tmp_path, 1, 12)
    _, result = sort_out(log.lines[:4] + log.lines[7:])
    assert isinstance(result[log.chain][-1], Problem)
    assert result[log.chain][-1].reason == "missing seq 5..7"

    forged = log.lines[5].replace(b"inv-6", b"inv-X")
    _, result = sort_out([*log.lines, forged])
    last = result[log.chain][-1]
    assert isinstance(last, Problem) and last.reason == "conflicting records at seq 6"
    assert last.entry.lineno in (6, len(log.lines) + 1)


def test_lines_without_a_chain_stay_with_their_log() -> None:
    group = Grouping()
    try:
        first, second = group.source("a/audit.jsonl.000001"), group.source("a/audit.jsonl")
        other = group.source("b/audit.jsonl")
        assert group.add(b'{"seq":1}\n', first, 1) == "log:a/audit.jsonl"
        assert group.add(b'{"seq":2}\n', second, 1) == "log:a/audit.jsonl"
        assert group.add(b"garbage\n", other, 2) == "log:b/audit.jsonl"
    finally:
        group.close()


def test_more_chains_than_open_files_are_spilled_all_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grouping, "MAX_OPEN", 2)
    logs = chains(tmp_path, 5, 6)
    lines = [line for index in range(6) for log in logs for line in log.lines[index:index + 1]]
    group, result = sort_out(lines)
    try:
        for log in logs:
            assert [e.line for e in result[log.chain] if isinstance(e, Entry)] == log.lines
        assert not group.unsorted
    finally:
        group.close()


def test_spill_files_wait_in_a_private_folder_inside_the_one_given_and_go_at_close(
        tmp_path: Path) -> None:
    group = Grouping(str(tmp_path))
    group.add(b'{"chain":"' + b"a" * 32 + b'","seq":1}\n', group.source("x"), 1)
    (private,) = tmp_path.iterdir()
    assert private.name.startswith("audit-verify-") and any(private.iterdir())
    group.close()
    assert not any(tmp_path.iterdir())
