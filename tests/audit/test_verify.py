"""The audit log verifier against clean chains and a battery of tampered ones."""

from __future__ import annotations

import io
import json
import random
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import chain as audit_chain
from gateway.audit.verify import (
    VerifyFailure,
    VerifyOk,
    parse_checkpoint,
    run,
    verify,
)

KEY = b"auditors-key-0123456789abcdef0123456789"
OTHER_KEY = b"attackers-key-9876543210fedcba9876543210"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "audit-verification.md"


def cancel_body(i: int) -> dict[str, Any]:
    return {
        "ts": f"2025-03-01T12:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z",
        "event": "cancel.attempt" if i % 2 else "cancel.result",
        "request_id": f"req-{i:04d}",
        "invocation_id": f"inv-{i:04d}-é",  # non-ASCII, written as itself
        "team": "billing",
        "key_id": "k1",
        "client": "127.0.0.1",
        "outcome": "pending" if i % 2 else "cancelled",
        "status": None if i % 2 else 200,
        "upstream_status": None if i % 2 else 200,
        "error": None,
        "duration_ms": round(i * 1.2345, 3),
    }


def build_chain(
    n: int,
    *,
    key: bytes | None = None,
    start_seq: int = 1,
    prev: str = audit_chain.GENESIS,
    checkpoint_every: int | None = None,
    body_offset: int = 0,
) -> list[tuple[dict[str, Any], bytes]]:
    """`n` sealed records (record, line), with an audit.checkpoint every `checkpoint_every`."""
    out: list[tuple[dict[str, Any], bytes]] = []
    seq = start_seq
    for i in range(n):
        if checkpoint_every and i and i % checkpoint_every == 0:
            body: dict[str, Any] = {
                "ts": "2025-03-01T13:00:00.000Z",
                "event": "audit.checkpoint",
                "head_seq": seq - 1,
                "head_hash": prev,
            }
        else:
            body = cancel_body(i + body_offset)
        record, line = audit_chain.seal(body, seq=seq, prev=prev, mac_key=key)
        out.append((record, line))
        prev = record["hash"]
        seq += 1
    return out


def reseal(records: Sequence[dict[str, Any]], *, key: bytes | None, start: int = 0) -> list[bytes]:
    """Renumber and rechain `records` from index `start` on, as an attacker without the key
    (or with `key`) would; lines before `start` are kept as they are."""
    lines: list[bytes] = []
    prev = audit_chain.GENESIS
    for i, record in enumerate(records):
        if i < start:
            lines.append(audit_chain.canonical(record) + b"\n")
            prev = record["hash"]
            continue
        body = {k: v for k, v in audit_chain.body_of(record).items() if k not in ("seq", "prev")}
        sealed, line = audit_chain.seal(body, seq=i + 1, prev=prev, mac_key=key)
        lines.append(line)
        prev = sealed["hash"]
    return lines


def write(tmp_path: Path, name: str, lines: Sequence[bytes]) -> str:
    path = tmp_path / name
    path.write_bytes(b"".join(lines))
    return str(path)


def lines_of(chain: Sequence[tuple[dict[str, Any], bytes]]) -> list[bytes]:
    return [line for _, line in chain]


def failure(result: VerifyOk | VerifyFailure) -> VerifyFailure:
    assert isinstance(result, VerifyFailure), result
    return result


def run_cli(
    paths: Sequence[str],
    *,
    keys: Sequence[str] = (),
    checkpoints: Sequence[str] = (),
    allow_partial: bool = False,
) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(paths, keys, checkpoints, allow_partial, out, err)
    return code, out.getvalue(), err.getvalue()


# --- clean logs ---------------------------------------------------------------------------


def test_clean_chain_ok_and_run_prints_ok_line(tmp_path: Path) -> None:
    chain = build_chain(25, checkpoint_every=10)
    path = write(tmp_path, "audit.jsonl", lines_of(chain))
    result = verify([path])
    head = chain[-1][0]["hash"]
    assert result == VerifyOk(records=25, head_seq=25, head_hash=head)
    code, out, err = run_cli([path])
    assert (code, out, err) == (0, f"ok: 25 records, head {head}\n", "")


def test_empty_log_is_an_empty_chain(tmp_path: Path) -> None:
    path = write(tmp_path, "audit.jsonl", [])
    assert verify([path]) == VerifyOk(0, 0, audit_chain.GENESIS)


def test_clean_rotated_set_across_three_files_ok(tmp_path: Path) -> None:
    lines = lines_of(build_chain(30, key=KEY, checkpoint_every=7))
    paths = [
        write(tmp_path, "audit.jsonl.000001", lines[:10]),
        write(tmp_path, "audit.jsonl.000002", lines[10:20]),
        write(tmp_path, "audit.jsonl", lines[20:]),
    ]
    result = verify(paths, hmac_keys=[KEY])
    assert isinstance(result, VerifyOk)
    assert (result.records, result.head_seq) == (30, 30)
    key_file = tmp_path / "hmac.key"
    key_file.write_bytes(KEY + b"\n")
    assert run_cli(paths, keys=[str(key_file)])[0] == 0


def test_key_rotation_two_keys_accepted(tmp_path: Path) -> None:
    first = build_chain(10, key=OTHER_KEY)
    second = build_chain(10, key=KEY, start_seq=11, prev=first[-1][0]["hash"], body_offset=10)
    path = write(tmp_path, "audit.jsonl", lines_of(first) + lines_of(second))
    assert isinstance(verify([path], hmac_keys=[KEY, OTHER_KEY]), VerifyOk)
    fail = failure(verify([path], hmac_keys=[KEY]))
    assert fail.line == 1 and "bad mac" in fail.reason


def test_allow_partial_accepts_a_later_file_alone(tmp_path: Path) -> None:
    lines = lines_of(build_chain(20, key=KEY))
    write(tmp_path, "audit.jsonl.000001", lines[:12])
    live = write(tmp_path, "audit.jsonl", lines[12:])
    result = verify([live], hmac_keys=[KEY], allow_partial=True)
    assert isinstance(result, VerifyOk)
    assert (result.records, result.head_seq) == (8, 20)


# --- tampering ----------------------------------------------------------------------------


def test_flip_one_byte_in_a_field_is_hash_mismatch(tmp_path: Path) -> None:
    lines = lines_of(build_chain(10))
    lines[4] = lines[4].replace(b'"team":"billing"', b'"team":"bilking"')
    path = write(tmp_path, "audit.jsonl", lines)
    fail = failure(verify([path]))
    assert (fail.line, fail.path) == (5, path)
    assert fail.reason.startswith("hash mismatch")
    code, out, _ = run_cli([path])
    assert code == 1 and out.startswith(f"{path}:5: hash mismatch")


def test_remove_a_record_is_seq_gap(tmp_path: Path) -> None:
    lines = lines_of(build_chain(10))
    del lines[3]
    fail = failure(verify([write(tmp_path, "audit.jsonl", lines)]))
    assert fail.line == 4
    assert "seq gap: expected seq 4, found seq 5" in fail.reason


def test_swap_two_records_is_out_of_order(tmp_path: Path) -> None:
    lines = lines_of(build_chain(10))
    lines[5], lines[6] = lines[6], lines[5]
    fail = failure(verify([write(tmp_path, "audit.jsonl", lines)]))
    assert fail.line == 6
    assert "records out of order: found seq 7 where seq 6 was expected" in fail.reason


def test_duplicate_one_record_is_seq_repeated(tmp_path: Path) -> None:
    lines = lines_of(build_chain(10))
    lines.insert(4, lines[3])
    path = write(tmp_path, "audit.jsonl", lines)
    fail = failure(verify([path]))
    assert fail.line == 5
    assert "seq 4 repeated: duplicated record" in fail.reason
    assert f"{path}:4" in fail.reason


def test_insert_forged_record_renumbered_passes_without_key_fails_bad_mac_with_key(
    tmp_path: Path,
) -> None:
    records = [record for record, _ in build_chain(10, key=KEY)]
    forged = {**cancel_body(99), "seq": 0, "prev": "", "hash": ""}
    records.insert(5, forged)
    # The attacker (no key) recomputes hashes from the forged record on, renumbering the rest.
    lines = reseal(records, key=None, start=5)
    path = write(tmp_path, "audit.jsonl", lines)
    # Without the key, the chain alone can't tell: a consistent rewrite from seq 6 on.
    assert isinstance(verify([path]), VerifyOk)
    # With the key, the forged record has no valid mac (here: none at all)...
    fail = failure(verify([path], hmac_keys=[KEY]))
    assert fail.line == 6 and "missing mac" in fail.reason
    # ...and if the attacker makes up a mac, it is a bad one.
    lines = reseal(records, key=OTHER_KEY, start=5)
    path = write(tmp_path, "audit.jsonl", lines)
    fail = failure(verify([path], hmac_keys=[KEY]))
    assert fail.line == 6 and fail.reason.startswith("bad mac")


def test_insert_forged_record_without_renumbering_is_seq_repeated(tmp_path: Path) -> None:
    chain = build_chain(10)
    _, line = audit_chain.seal(cancel_body(99), seq=6, prev=chain[4][0]["hash"], mac_key=None)
    lines = lines_of(chain)
    lines.insert(5, line)
    fail = failure(verify([write(tmp_path, "audit.jsonl", lines)]))
    assert fail.line == 7
    assert "seq 6 repeated: two writers or duplicated record" in fail.reason


def test_cut_tail_after_checkpoint_is_truncated_with_checkpoint(tmp_path: Path) -> None:
    chain = build_chain(30, checkpoint_every=10)
    checkpoint = f"25:{chain[24][0]['hash']}"
    path = write(tmp_path, "audit.jsonl", lines_of(chain)[:22])
    # The cut log is a valid, shorter chain...
    assert isinstance(verify([path]), VerifyOk)
    # ...but not against a checkpoint noted before the cut.
    fail = failure(verify([path], checkpoints=[parse_checkpoint(checkpoint)]))
    assert fail.line == 22
    assert fail.reason == "log ends at seq 22 before checkpoint seq 25: truncated"
    code, out, _ = run_cli([path], checkpoints=[checkpoint])
    assert code == 1 and out.startswith(f"{path}:22: log ends at seq 22")


def test_truncated_before_checkpoint_reported_on_last_file(tmp_path: Path) -> None:
    lines = lines_of(build_chain(12))
    paths = [write(tmp_path, "audit.jsonl.000001", lines[:8]), write(tmp_path, "b", lines[8:])]
    fail = failure(verify(paths, checkpoints=[(40, "ab" * 32)]))
    assert (fail.path, fail.line) == (paths[1], 4)


def test_checkpoint_hash_mismatch(tmp_path: Path) -> None:
    chain = build_chain(20)
    # Rewritten from seq 8 on (consistently, no key): only the checkpoint shows it.
    records = [record for record, _ in chain]
    records[7] = {**records[7], "outcome": "not_found"}
    path = write(tmp_path, "audit.jsonl", reseal(records, key=None, start=7))
    assert isinstance(verify([path]), VerifyOk)
    fail = failure(verify([path], checkpoints=[(12, chain[11][0]["hash"])]))
    assert fail.line == 12
    assert fail.reason.startswith("checkpoint mismatch: record seq 12 has hash")
    # A checkpoint before the rewrite still matches.
    assert isinstance(verify([path], checkpoints=[(7, chain[6][0]["hash"])]), VerifyOk)


def test_replaced_hmac_key_all_macs_recomputed_is_bad_mac(tmp_path: Path) -> None:
    records = [record for record, _ in build_chain(10, key=KEY)]
    records[3] = {**records[3], "outcome": "forbidden"}
    path = write(tmp_path, "audit.jsonl", reseal(records, key=OTHER_KEY, start=0))
    assert isinstance(verify([path]), VerifyOk)
    assert isinstance(verify([path], hmac_keys=[OTHER_KEY]), VerifyOk)
    fail = failure(verify([path], hmac_keys=[KEY]))
    assert fail.line == 1 and fail.reason.startswith("bad mac")


def test_mac_missing_when_key_given(tmp_path: Path) -> None:
    path = write(tmp_path, "audit.jsonl", lines_of(build_chain(5)))
    fail = failure(verify([path], hmac_keys=[KEY]))
    assert fail.line == 1 and fail.reason.startswith("missing mac")


def test_mac_stripped_from_one_record_when_key_given(tmp_path: Path) -> None:
    chain = build_chain(5, key=KEY)
    lines = lines_of(chain)
    stripped = {k: v for k, v in chain[2][0].items() if k != "mac"}
    lines[2] = audit_chain.canonical(stripped) + b"\n"
    fail = failure(verify([write(tmp_path, "audit.jsonl", lines)], hmac_keys=[KEY]))
    assert fail.line == 3 and fail.reason.startswith("missing mac")


def test_interleave_two_chains_is_two_writers(tmp_path: Path) -> None:
    a = lines_of(build_chain(6))
    b = lines_of(build_chain(6, body_offset=50))
    lines = [line for pair in zip(a, b, strict=True) for line in pair]
    fail = failure(verify([write(tmp_path, "audit.jsonl", lines)]))
    assert fail.line == 2
    assert "seq 1 repeated: two writers or duplicated record" in fail.reason


def test_second_writer_starting_later_is_seq_going_backwards(tmp_path: Path) -> None:
    a = lines_of(build_chain(6))
    b = lines_of(build_chain(3, body_offset=50))
    lines = a[:4] + b[:1] + a[4:]
    fail = failure(verify([write(tmp_path, "audit.jsonl", lines)]))
    assert fail.line == 5
    assert "seq 1 repeated: two writers or duplicated record" in fail.reason
    assert "backwards from 4 to 1" in fail.reason


def test_two_writers_appending_to_the_same_head(tmp_path: Path) -> None:
    chain = build_chain(5)
    _, line = audit_chain.seal(cancel_body(77), seq=5, prev=chain[3][0]["hash"], mac_key=None)
    lines = [*lines_of(chain), line]
    fail = failure(verify([write(tmp_path, "audit.jsonl", lines)]))
    assert fail.line == 6
    assert "seq 5 repeated: two writers or duplicated record" in fail.reason
    assert "same prev" in fail.reason


def test_torn_last_line(tmp_path: Path) -> None:
    lines = lines_of(build_chain(6))
    lines[-1] = lines[-1][:40]
    fail = failure(verify([write(tmp_path, "audit.jsonl", lines)]))
    assert fail.line == 6 and fail.reason.startswith("truncated last line")


def test_last_line_without_newline_only(tmp_path: Path) -> None:
    lines = lines_of(build_chain(3))
    lines[-1] = lines[-1].rstrip(b"\n")
    fail = failure(verify([write(tmp_path, "audit.jsonl", lines)]))
    assert fail.line == 3 and fail.reason.startswith("truncated last line")


def test_empty_line(tmp_path: Path) -> None:
    lines = lines_of(build_chain(4))
    lines.insert(2, b"\n")
    fail = failure(verify([write(tmp_path, "audit.jsonl", lines)]))
    assert fail.line == 3 and fail.reason == "empty line"


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"not json at all\n", "unparsable line: not JSON"),
        (b"[1,2,3]\n", "unparsable line: not a JSON object"),
        (b'{"a":"\xff\xfe"}\n', "unparsable line: not UTF-8"),
        (b'{"a":NaN}\n', "unparsable line: not JSON (NaN"),
    ],
)
def test_unparsable_line(tmp_path: Path, garbage: bytes, reason: str) -> None:
    lines = lines_of(build_chain(4))
    lines.insert(2, garbage)
    fail = failure(verify([write(tmp_path, "audit.jsonl", lines)]))
    assert fail.line == 3 and fail.reason.startswith(reason)


def test_non_canonical_whitespace(tmp_path: Path) -> None:
    chain = build_chain(4)
    lines = lines_of(chain)
    lines[1] = json.dumps(chain[1][0], sort_keys=True, ensure_ascii=False).encode() + b"\n"
    fail = failure(verify([write(tmp_path, "audit.jsonl", lines)]))
    assert fail.line == 2
    assert fail.reason.startswith("non-canonical encoding") and "whitespace" in fail.reason


@pytest.mark.parametrize(
    ("rewrite", "detail"),
    [
        (lambda r: json.dumps(r, separators=(",", ":"), ensure_ascii=False), "key order"),
        (
            lambda r: json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=True),
            "escapes",
        ),
    ],
)
def test_non_canonical_key_order_or_escapes(tmp_path: Path, rewrite: Any, detail: str) -> None:
    chain = build_chain(4)
    lines = lines_of(chain)
    lines[1] = rewrite(chain[1][0]).encode() + b"\n"
    fail = failure(verify([write(tmp_path, "audit.jsonl", lines)]))
    assert fail.line == 2 and fail.reason.startswith("non-canonical encoding")
    assert detail in fail.reason


def test_non_canonical_crlf(tmp_path: Path) -> None:
    lines = lines_of(build_chain(4))
    lines[2] = lines[2][:-1] + b"\r\n"
    fail = failure(verify([write(tmp_path, "audit.jsonl", lines)]))
    assert fail.line == 3 and "CRLF" in fail.reason


def test_duplicate_json_key_is_non_canonical(tmp_path: Path) -> None:
    chain = build_chain(4)
    lines = lines_of(chain)
    lines[1] = lines[1].replace(b'"seq":2', b'"seq":2,"seq":2')
    fail = failure(verify([write(tmp_path, "audit.jsonl", lines)]))
    assert fail.line == 2
    assert fail.reason.startswith("non-canonical encoding: duplicate key 'seq'")


def test_missing_and_wrongly_typed_fields(tmp_path: Path) -> None:
    chain = build_chain(3)
    body = {k: v for k, v in audit_chain.body_of(chain[1][0]).items() if k != "ts"}
    line = audit_chain.seal(body, seq=2, prev=chain[0][0]["hash"], mac_key=None)[1]
    path = write(tmp_path, "a", [chain[0][1], line])
    assert failure(verify([path])).reason == "missing field 'ts'"
    record = {**chain[1][0], "seq": "2"}
    path = write(tmp_path, "b", [chain[0][1], audit_chain.canonical(record) + b"\n"])
    fail = failure(verify([path]))
    assert fail.line == 2 and fail.reason.startswith("wrongly typed field 'seq'")


def test_files_given_out_of_order(tmp_path: Path) -> None:
    lines = lines_of(build_chain(30))
    one = write(tmp_path, "audit.jsonl.000001", lines[:10])
    two = write(tmp_path, "audit.jsonl.000002", lines[10:20])
    live = write(tmp_path, "audit.jsonl", lines[20:])
    fail = failure(verify([one, live, two]))
    assert (fail.path, fail.line) == (live, 1)
    assert "seq gap: expected seq 11, found seq 21" in fail.reason
    assert "files are out of order" in fail.reason
    fail = failure(verify([two, one, live], allow_partial=True))
    assert (fail.path, fail.line) == (one, 1)
    assert "seq went back from 20 to 1 at the start of a file" in fail.reason


def test_first_file_missing_without_allow_partial(tmp_path: Path) -> None:
    lines = lines_of(build_chain(20))
    two = write(tmp_path, "audit.jsonl.000002", lines[10:])
    fail = failure(verify([two]))
    assert (fail.path, fail.line) == (two, 1)
    assert "first record has seq 11, expected seq 1" in fail.reason


def test_first_record_prev_not_genesis(tmp_path: Path) -> None:
    _, line = audit_chain.seal(cancel_body(1), seq=1, prev="ab" * 32, mac_key=None)
    fail = failure(verify([write(tmp_path, "audit.jsonl", [line])]))
    assert fail.line == 1 and "not the genesis hash" in fail.reason


def test_prev_mismatch_replaced_record(tmp_path: Path) -> None:
    chain = build_chain(6)
    # Record 3 replaced by one chained after some other hash, same seq.
    _, line = audit_chain.seal(cancel_body(40), seq=3, prev="cd" * 32, mac_key=None)
    lines = lines_of(chain)
    lines[2] = line
    fail = failure(verify([write(tmp_path, "audit.jsonl", lines)]))
    assert fail.line == 3 and fail.reason.startswith("prev mismatch")


def test_checkpoint_record_with_wrong_head_fields(tmp_path: Path) -> None:
    chain = build_chain(5)
    body = {
        "ts": "2025-03-01T13:00:00.000Z",
        "event": "audit.checkpoint",
        "head_seq": 3,
        "head_hash": chain[2][0]["hash"],
    }
    _, line = audit_chain.seal(body, seq=6, prev=chain[4][0]["hash"], mac_key=None)
    fail = failure(verify([write(tmp_path, "audit.jsonl", [*lines_of(chain), line])]))
    assert fail.line == 6
    assert "checkpoint record disagrees with its position: head_seq is 3" in fail.reason


def test_recovered_record_is_an_ordinary_chain_record(tmp_path: Path) -> None:
    chain = build_chain(3)
    body = {
        "ts": "2025-03-01T13:00:00.000Z",
        "event": "audit.recovered",
        "reason": "torn last line",
        "discarded_bytes": 5,
        "discarded_sha256": "ef" * 32,
        "discarded_b64": "eyJ0cyI=",
    }
    _, line = audit_chain.seal(body, seq=4, prev=chain[2][0]["hash"], mac_key=None)
    assert verify([write(tmp_path, "audit.jsonl", [*lines_of(chain), line])]) == VerifyOk(
        4, 4, json.loads(line)["hash"]
    )


def test_random_chain_deleting_any_single_record_is_detected(tmp_path: Path) -> None:
    rng = random.Random(1234)
    chain = build_chain(50, key=KEY, checkpoint_every=rng.randint(5, 12))
    head = (50, chain[-1][0]["hash"])
    lines = lines_of(chain)
    for index in range(50):
        kept = lines[:index] + lines[index + 1 :]
        path = write(tmp_path, f"audit-{index}.jsonl", kept)
        result = verify([path], hmac_keys=[KEY], checkpoints=[head])
        fail = failure(result)
        if index == 49:
            # Only the checkpoint catches a removed last record.
            assert fail.reason == "log ends at seq 49 before checkpoint seq 50: truncated"
            assert fail.line == 49
        elif index == 0:
            assert fail.line == 1 and "first record has seq 2" in fail.reason
        else:
            assert fail.line == index + 1
            assert f"seq gap: expected seq {index + 1}, found seq {index + 2}" in fail.reason


# --- run(): usage errors and parse_checkpoint ------------------------------------------------


def test_run_usage_errors_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "audit.jsonl", lines_of(build_chain(3)))
    code, out, err = run_cli([str(tmp_path / "missing.jsonl")])
    assert (code, out) == (2, "") and "no such file" in err
    code, _, err = run_cli([path], keys=[str(tmp_path / "nokey")])
    assert code == 2 and "audit HMAC key file is missing" in err
    short = tmp_path / "short.key"
    short.write_text("tooshort\n")
    code, _, err = run_cli([path], keys=[str(short)])
    assert code == 2 and "shorter than" in err and "tooshort" not in err
    code, _, err = run_cli([path], checkpoints=["12"])
    assert code == 2 and "SEQ:HASH" in err
    code, _, err = run_cli([path], checkpoints=[f"1:{'a' * 64}", f"1:{'b' * 64}"])
    assert code == 2 and "two checkpoints for seq 1" in err
    code, _, err = run_cli([path, path])
    assert code == 2 and "given twice" in err
    code, _, err = run_cli([str(tmp_path)])
    assert code == 2 and "directory" in err
    assert run_cli([])[0] == 2


def test_run_allow_partial_notes_unchecked_checkpoints(tmp_path: Path) -> None:
    chain = build_chain(20)
    live = write(tmp_path, "audit.jsonl", lines_of(chain)[12:])
    code, out, err = run_cli([live], checkpoints=[f"3:{chain[2][0]['hash']}"], allow_partial=True)
    assert code == 0 and out.startswith("ok: 8 records")
    assert "checkpoint seq 3" in err and "not be checked" in err


def test_parse_checkpoint() -> None:
    digest = "AB" * 32
    assert parse_checkpoint(f" 12:{digest}\n") == (12, digest.lower())
    for bad, message in [
        ("12", "SEQ:HASH"),
        (f"0:{digest}", "SEQ must be"),
        (f"-3:{digest}", "SEQ must be"),
        (f"x:{digest}", "SEQ must be"),
        ("12:abc", "HASH must be 64 hex digits"),
        (f"12:{'g' * 64}", "HASH must be 64 hex digits"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_checkpoint(bad)


# --- the auditors' standalone script in docs/audit-verification.md --------------------------


def docs_script(tmp_path: Path) -> Path:
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)
    assert len(blocks) == 1, "the docs hold exactly one python block: the auditors' script"
    script = tmp_path / "verify_audit.py"
    script.write_text(blocks[0], encoding="utf-8")
    return script


def run_script(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=30
    )


def test_docs_script_accepts_clean_rotated_log(tmp_path: Path) -> None:
    script = docs_script(tmp_path)
    chain = build_chain(25, key=KEY, checkpoint_every=10)
    lines = lines_of(chain)
    paths = [write(tmp_path, "audit.jsonl.000001", lines[:12]), write(tmp_path, "x", lines[12:])]
    key_file = tmp_path / "hmac.key"
    key_file.write_bytes(KEY + b"\n")
    done = run_script(script, "--key", str(key_file), *paths)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"ok: 25 records, head {chain[-1][0]['hash']}\n"
    # Same verdict as the gateway's verifier.
    code, out, _ = run_cli(paths, keys=[str(key_file)])
    assert (code, out) == (0, done.stdout)


def _tampered(kind: str) -> list[bytes]:
    chain = build_chain(12, key=KEY)
    lines = lines_of(chain)
    records = [record for record, _ in chain]
    if kind == "edit":
        lines[4] = lines[4].replace(b'"team":"billing"', b'"team":"bilking"')
    elif kind == "remove":
        del lines[6]
    elif kind == "swap":
        lines[2], lines[3] = lines[3], lines[2]
    elif kind == "duplicate":
        lines.insert(8, lines[7])
    elif kind == "torn":
        lines[-1] = lines[-1][:30]
    elif kind == "whitespace":
        lines[5] = lines[5].replace(b'","', b'", "', 1)
    elif kind == "forged":
        records.insert(3, {**cancel_body(99), "seq": 0, "prev": "", "hash": ""})
        lines = reseal(records, key=OTHER_KEY, start=3)
    return lines


@pytest.mark.parametrize(
    ("kind", "line"),
    [
        ("edit", 5),
        ("remove", 7),
        ("swap", 3),
        ("duplicate", 9),
        ("torn", 12),
        ("whitespace", 6),
        ("forged", 4),
    ],
)
def test_docs_script_and_verifier_agree_on_tampered_log(
    tmp_path: Path, kind: str, line: int
) -> None:
    script = docs_script(tmp_path)
    path = write(tmp_path, "audit.jsonl", _tampered(kind))
    key_file = tmp_path / "hmac.key"
    key_file.write_bytes(KEY)
    done = run_script(script, "--key", str(key_file), path)
    assert done.returncode == 1
    assert done.stderr.startswith(f"{path}:{line}: "), done.stderr
    fail = failure(verify([path], hmac_keys=[KEY]))
    assert (fail.path, fail.line) == (path, line)
