"""CRI container log lines unwrapped into audit lines, on the format's published examples
(the kubelet's own parser tests, containerd's and CRI-O's timestamps)."""

from __future__ import annotations

from gateway.audit.cri import unwrap


def lines(text: str) -> list[bytes]:
    return text.encode().splitlines(keepends=True)


def test_the_kubelets_examples_unwrap_to_their_text() -> None:
    got = list(unwrap(lines(
        "2016-10-20T18:39:20.57606443Z stdout F cri stdout test log\n"
        "2016-10-20T18:39:20.57606443Z stderr F cri stderr test log\n"
        "2016-10-20T18:39:20.57606443Z stdout P cri stdout partial test log\n"
        "2016-10-20T18:39:20.57606443Z stdout F :end\n")))
    assert got == [(1, b"cri stdout test log\n"), (3, b"cri stdout partial test log:end\n")]


def test_partial_entries_join_across_interleaved_stderr_and_extra_tags() -> None:
    record = '{"event":"cancel.result","seq":7,"team":"billing"}'
    got = list(unwrap(lines(
        f"2026-11-28T12:00:00.000000001Z stdout P:TAG1:TAG2 {record[:10]}\n"
        "2026-11-28T12:00:00.000000002Z stderr F {\"event\": \"http.access\"}\n"
        f"2026-11-28T12:00:00.000000003+00:00 stdout P {record[10:30]}\n"
        "2026-11-28T12:00:00.000000004Z stderr P half of a log line\n"
        f"2026-11-28T12:00:00.000000005Z stdout F {record[30:]}\n")))
    assert got == [(1, record.encode() + b"\n")]


def test_plain_audit_lines_pass_through_and_text_keeps_its_spaces() -> None:
    got = list(unwrap(lines(
        '{"seq":1}\n'
        "2026-11-28T13:00:00Z stdout F   three leading spaces\n"
        "not a cri line\n")))
    assert got == [(1, b'{"seq":1}\n'), (2, b"  three leading spaces\n"),
                   (3, b"not a cri line\n")]


def test_a_partial_run_that_never_ends_comes_out_without_a_newline() -> None:
    got = list(unwrap(lines(
        "2026-11-28T13:00:00.1Z stdout P {\"seq\":\n"
        "2026-11-28T13:00:00.2Z stdout P 9}")))  # the log was cut in the middle of an entry
    assert got == [(1, b'{"seq":9}')]
