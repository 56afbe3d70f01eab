"""The one-pass path of `audit verify` and `audit query` says exactly what the general path
says: on good chains (where it answers) and on every kind of bad one (where it must give up)."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import io
import json
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.audit import chain as audit_chain
from gateway.audit import fast_fleet, inputs, note
from gateway.audit.query import Filters, parse_time
from gateway.audit.verify_fleet import Usage, options_from, outcome_of, verify_inputs
from tests.audit.signed_logs import MAC_KEY, ChainBuilder, reseal

pytestmark = pytest.mark.usefixtures("each_way")  # compiled loops and Python alike

SIGNER = note.generate_key("audit.example/fast")
VKEY = SIGNER.verifier.encoded


def run(paths: Sequence[Path], tmp: Path, *, fast: bool, macs: bool = True,
        public_keys: Sequence[str] = (VKEY,), checkpoints: Sequence[str] = (),
        filters: Filters | None = None, jobs: int = 1) -> tuple[Any, ...]:
    """Status, stdout, stderr and the query rows of one run."""
    key_file = tmp / "hmac.key"
    key_file.write_bytes(MAC_KEY)
    options = options_from([str(key_file)] if macs else [], list(checkpoints), False,
                           list(public_keys))
    out, err = io.StringIO(), io.StringIO()
    verified = verify_inputs([str(p) for p in paths], options, jobs=jobs, out=out, err=err,
                             stdin=None, filters=filters,
                             verb="query" if filters else "verify", fast=fast)
    rows = [row for result in verified.results for row in result.rows.sorted()]
    return verified.status, out.getvalue(), err.getvalue(), sorted(rows, key=str)


def answered_fast(paths: Sequence[Path], *, macs: bool = True,
                  public_keys: Sequence[str] = (VKEY,), checkpoints: Sequence[str] = (),
                  tmp: Path) -> bool:
    """Whether the one-pass path answered (rather than leaving it to the general path)."""
    key_file = tmp / "hmac.key"
    key_file.write_bytes(MAC_KEY)
    options = options_from([str(key_file)] if macs else [], list(checkpoints), False,
                           list(public_keys))
    checks = fast_fleet.Checks(options.hmac_keys, options.checkpoints, options.verifiers,
                               options.anchors)
    items = inputs.expand([str(p) for p in paths])
    return fast_fleet.results(items, checks, outcome_of, jobs=1, filters=None) is not None


def same(paths: Sequence[Path], tmp: Path, **kwargs: Any) -> tuple[Any, ...]:
    fast, general = run(paths, tmp, fast=True, **kwargs), run(paths, tmp, fast=False, **kwargs)
    assert fast == general
    return fast


def good_chain(n: int = 30, every: int = 7, **kwargs: Any) -> ChainBuilder:
    builder = ChainBuilder(signer=SIGNER, **kwargs)
    builder.cancels(n, checkpoint_every=every)
    return builder


def seal_as_is(body: dict[str, Any], encode: Any = audit_chain.canonical) -> bytes:
    """A record line sealed over `body` exactly as given (seq, prev and all), with the MAC key:
    what an attacker holding the HMAC key (not the signing key) can write."""
    encoded = encode(body)
    digest = hashlib.sha256(encoded).hexdigest()
    mac = hmac.new(MAC_KEY, encoded, hashlib.sha256).hexdigest()
    return encode({**body, "hash": digest, "mac": mac}) + b"\n"


# -- good chains: the one-pass path answers, and says the same ------------------------------


def test_a_good_signed_chain_is_answered_in_one_pass_with_the_general_paths_words(
        tmp_path: Path) -> None:
    log = good_chain().write(tmp_path / "audit.jsonl")
    assert answered_fast([log], tmp=tmp_path)
    status, out, err, _ = same([log], tmp_path)
    assert status == 0 and "ok: " in out and "signed at tree size" in out and err == ""


def test_without_keys_the_warnings_are_the_same(tmp_path: Path) -> None:
    log = good_chain().write(tmp_path / "audit.jsonl")
    assert answered_fast([log], macs=False, public_keys=(), tmp=tmp_path)
    status, _, err, _ = same([log], tmp_path, macs=False, public_keys=())
    assert status == 0 and "no --hmac-key-file" in err and "no --public-key" in err


def test_rotated_files_given_in_name_order_are_one_chain(tmp_path: Path) -> None:
    chain = good_chain(60, 10)
    lines = chain.lines
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "audit.jsonl.000001").write_bytes(b"".join(lines[:25]))
    (folder / "audit.jsonl.000002").write_bytes(b"".join(lines[25:50]))
    (folder / "audit.jsonl").write_bytes(b"".join(lines[50:]))  # sorts first by name
    assert answered_fast([folder], tmp=tmp_path)
    status, out, _, _ = same([folder], tmp_path)
    assert status == 0 and f"ok: {len(lines)} records" in out


def test_several_chains_in_a_folder_with_jobs(tmp_path: Path) -> None:
    folder = tmp_path / "fleet"
    folder.mkdir()
    for n in range(3):
        good_chain(20 + n, 5, instance=f"pod-{n}").write(folder / f"pod-{n}.jsonl")
    assert answered_fast([folder], tmp=tmp_path)
    status, out, _, _ = same([folder], tmp_path, jobs=2)
    assert status == 0 and len(out.splitlines()) == 3


def test_query_rows_are_the_same_and_come_only_from_matching_records(tmp_path: Path) -> None:
    log = good_chain(60, 9).write(tmp_path / "audit.jsonl")
    for filters in (Filters(team="search"), Filters(team="billing", outcomes=frozenset({"x"})),
                    Filters(since=parse_time("2025-03-01T12:00:30Z")), Filters()):
        status, _, _, rows = same([log], tmp_path, filters=filters)
        assert status == 0
        if filters.team == "search" and not filters.outcomes:
            assert rows and all(row[3][3] == "search" for row in rows)


def test_seq_hash_checkpoints_are_held_to_the_same(tmp_path: Path) -> None:
    chain = good_chain()
    log = chain.write(tmp_path / "audit.jsonl")
    record = chain.records[9]
    good, bad = f"{record['seq']}:{record['hash']}", f"{record['seq']}:{'0' * 64}"
    beyond = f"{len(chain.records) + 5}:{'a' * 64}"
    assert answered_fast([log], checkpoints=(good,), tmp=tmp_path)
    assert same([log], tmp_path, checkpoints=(good,))[0] == 0
    assert same([log], tmp_path, checkpoints=(bad,))[0] == 1
    assert same([log], tmp_path, checkpoints=(beyond,))[0] == 1


def test_a_signed_checkpoint_file_is_held_by_the_chain_and_a_longer_one_is_a_cut(
        tmp_path: Path) -> None:
    chain = good_chain(30, 7)
    short = ChainBuilder(signer=SIGNER, chain=chain.chain)
    short.records, short.lines = chain.records[:20], chain.lines[:20]
    log = short.write(tmp_path / "audit.jsonl")
    held, beyond = tmp_path / "held.note", tmp_path / "beyond.note"
    held.write_text(chain.notes()[1])
    beyond.write_text(chain.notes()[-1])
    assert same([log], tmp_path, checkpoints=(str(held),))[0] == 0
    assert same([log], tmp_path, checkpoints=(str(beyond),))[0] == 1


# -- bad chains: the one-pass path gives up, and the general path names the problem ---------


def mutated(tmp_path: Path, lines: list[bytes]) -> Path:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(lines))
    return path


def gives_up(tmp_path: Path, lines: list[bytes], **kwargs: Any) -> tuple[Any, ...]:
    path = mutated(tmp_path, lines)
    assert not answered_fast([path], tmp=tmp_path, **kwargs)
    result = same([path], tmp_path, **kwargs)
    assert result[0] == 1
    return result


def last_resealed(chain: ChainBuilder, edit: Any, encode: Any = audit_chain.canonical
                  ) -> list[bytes]:
    """The chain with its last record (after the last checkpoint: no signed root covers it)
    edited and sealed again with the HMAC key."""
    body = {k: v for k, v in chain.records[-1].items() if k not in ("hash", "mac")}
    edit(body)
    return [*chain.lines[:-1], seal_as_is(body, encode)]


def test_a_seq_written_as_a_float_is_not_passed(tmp_path: Path) -> None:
    chain = good_chain(3, 0)
    lines = last_resealed(chain, lambda body: body.update(seq=float(body["seq"])))
    assert b'"seq":5.0' in lines[-1]
    assert "wrongly typed field 'seq'" in gives_up(tmp_path, lines)[1]


def test_a_tiny_float_in_orjsons_form_is_not_canonical_and_not_passed(tmp_path: Path) -> None:
    # orjson writes 1e-05 as 0.00001 and reads that back equal: only the guard stops the pass.
    chain = good_chain(3, 0)
    lines = last_resealed(chain, lambda body: body.update(duration_ms=1e-05),
                          lambda b: audit_chain.canonical(b).replace(b"1e-05", b"0.00001"))
    assert b'"duration_ms":0.00001' in lines[-1]
    assert "non-canonical encoding" in gives_up(tmp_path, lines)[1]


def test_a_one_digit_exponent_in_orjsons_form_is_not_passed(tmp_path: Path) -> None:
    chain = good_chain(3, 0)
    lines = last_resealed(chain, lambda body: body.update(duration_ms=[2.5e-07]),
                          lambda b: audit_chain.canonical(b).replace(b"2.5e-07", b"2.5e-7"))
    assert b'"duration_ms":[2.5e-7]' in lines[-1]
    assert "non-canonical encoding" in gives_up(tmp_path, lines)[1]


def test_a_tiny_float_in_pythons_form_verifies_through_the_general_path(tmp_path: Path) -> None:
    chain = ChainBuilder(signer=SIGNER)
    chain.add({"ts": "2025-03-01T12:00:01.000Z", "event": "cancel.result",
               "duration_ms": 1e-05})
    chain.add({"ts": "2025-03-01T12:00:01.000Z", "event": "cancel.result",
               "duration_ms": 2.5e-07})
    path = chain.write(tmp_path / "audit.jsonl")
    assert b"1e-05" in path.read_bytes() and b"2.5e-07" in path.read_bytes()
    assert same([path], tmp_path)[0] == 0


def test_a_null_mac_or_a_mac_of_another_form_is_not_passed(tmp_path: Path) -> None:
    chain = good_chain(3, 0)
    body = {k: v for k, v in chain.records[-1].items() if k not in ("hash", "mac")}
    encoded = audit_chain.canonical(body)
    for mac in (None, "A" * 64, 5):
        sealed = {**body, "hash": hashlib.sha256(encoded).hexdigest(), "mac": mac}
        line = audit_chain.canonical(sealed) + b"\n"
        result = gives_up(tmp_path, [*chain.lines[:-1], line], macs=False)
        assert "wrongly typed field 'mac'" in result[1]


def test_a_record_with_nested_hash_and_seq_keys_is_checked_in_one_pass_all_the_same(
        tmp_path: Path) -> None:
    # The cut must be the record's own members: a nested "hash" before them is not cut.
    chain = good_chain(3, 0)
    body = {k: v for k, v in chain.records[-1].items() if k not in ("hash", "mac")}
    nested = {"a": 1, "hash": "0" * 64, "mac": "1" * 64, "seq": 9, "chain": "f" * 32}
    path = mutated(tmp_path, [*chain.lines[:-1], seal_as_is({**body, "details": nested})])
    assert answered_fast([path], tmp=tmp_path)
    assert same([path], tmp_path)[0] == 0


def test_an_edited_record_resealed_with_the_hmac_key_fails_on_its_signed_root(
        tmp_path: Path) -> None:
    chain = good_chain(30, 7)
    records = [dict(r) for r in chain.records]
    records[4]["team"] = "mallory"
    result = gives_up(tmp_path, reseal(records, mac_key=MAC_KEY, fix_roots=True))
    assert "note" in result[1] or "root" in result[1]


def test_a_gap_and_a_cut_tail_are_not_passed(tmp_path: Path) -> None:
    lines = good_chain(20, 6).lines
    assert "missing seq 6..6" in gives_up(tmp_path, lines[:5] + lines[6:])[1]
    assert "truncated last line" in gives_up(tmp_path, [*lines[:-1], lines[-1][:-1]])[1]


def test_a_record_shipped_twice_or_out_of_order_is_sorted_out_by_the_general_path(
        tmp_path: Path) -> None:
    lines = good_chain(20, 6).lines
    for shipped in ([*lines[:5], lines[5], lines[5], *lines[6:]],
                    [*lines[:5], lines[6], lines[5], *lines[7:]]):
        path = mutated(tmp_path, shipped)
        assert not answered_fast([path], tmp=tmp_path)
        assert same([path], tmp_path)[0] == 0


def test_two_files_of_one_chain_that_overlap_go_to_the_general_path(tmp_path: Path) -> None:
    lines = good_chain(20, 6).lines
    (tmp_path / "a.jsonl").write_bytes(b"".join(lines[:12]))
    (tmp_path / "b.jsonl").write_bytes(b"".join(lines[8:]))  # shipped twice: harmless
    paths = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    assert not answered_fast(paths, tmp=tmp_path)
    assert same(paths, tmp_path)[0] == 0


# -- anything at all: the two paths never disagree ------------------------------------------

_CHAIN = good_chain(24, 5)
_EDITS = st.sampled_from(["flip", "delete", "duplicate", "swap", "cut", "space", "escape",
                          "reseal", "reseal_last", "reorder_keys", "uppercase", "newline"])


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(_EDITS, st.integers(0, 10**6)), min_size=1, max_size=3),
       gzipped=st.booleans())
def test_any_edits_to_a_good_chain_get_the_single_log_verifiers_answer_either_way(
        tmp_path: Path, edits: list[tuple[str, int]], gzipped: bool) -> None:
    """As a plain file (the one-pass planner's) or gzipped (the general way, whose ordered
    copy is checked in one pass too), against the single-log verifier alone."""
    lines = list(_CHAIN.lines)
    for edit, seed in edits:
        lines = _edit(lines, edit, random.Random(seed))
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    text = b"".join(lines)
    path = folder / ("audit.jsonl.gz" if gzipped else "audit.jsonl")
    path.write_bytes(gzip.compress(text) if gzipped else text)
    same([path], folder)


def _edit(lines: list[bytes], edit: str, rng: random.Random) -> list[bytes]:
    if not lines:
        return lines
    i = len(lines) - 1 if edit == "reseal_last" else rng.randrange(len(lines))
    line = lines[i]
    if edit in ("reseal", "reseal_last", "reorder_keys"):
        try:
            record = json.loads(line)
        except ValueError:
            return lines
        if not isinstance(record, dict):
            return lines
    if edit == "flip":
        at = rng.randrange(len(line))
        line = line[:at] + bytes([line[at] ^ (1 << rng.randrange(8))]) + line[at + 1:]
    elif edit == "delete":
        return lines[:i] + lines[i + 1:]
    elif edit == "duplicate":
        return [*lines[:i], line, *lines[i:]]
    elif edit == "swap" and i + 1 < len(lines):
        return [*lines[:i], lines[i + 1], line, *lines[i + 2:]]
    elif edit == "cut" and line:
        return [*lines[:i], line[:rng.randrange(len(line))]]
    elif edit == "space" and b"," in line:
        at = line.index(b",")
        line = line[:at] + b" " + line[at:]
    elif edit == "escape":
        line = line.replace(b'"event":"', b'"event":"\\u0061', 1).replace(b"\\u0061a", b"a")
        line = line.replace(b'"ts":"2', b'"ts":"\\u0032', 1)
    elif edit in ("reseal", "reseal_last"):
        record["team"] = rng.choice(["search", "mallory", "ünïcode", 'quo"te', 7, None, [1]])
        body = {k: v for k, v in record.items() if k not in ("hash", "mac")}
        line = seal_as_is(body)
    elif edit == "reorder_keys":
        line = json.dumps(dict(reversed(record.items())), separators=(",", ":")).encode() + b"\n"
    elif edit == "uppercase":
        line = line.replace(b'"hash":"', b'"hash":"', 1).upper() if rng.random() < 0.1 else \
            line.replace(b'"prev":"', b'"prev":"A', 1)
    elif edit == "newline":
        line = line.replace(b"\n", b"\r\n")
    return [*lines[:i], line, *lines[i + 1:]]


# -- what the one-pass path hands on ---------------------------------------------------------


def fast_checks(tmp: Path, checkpoints: Sequence[str] = ()) -> fast_fleet.Checks:
    key_file = tmp / "hmac.key"
    key_file.write_bytes(MAC_KEY)
    options = options_from([str(key_file)], list(checkpoints), False, [VKEY])
    return fast_fleet.Checks(options.hmac_keys, options.checkpoints, options.verifiers,
                             options.anchors)


def test_a_chains_result_is_keyed_and_labelled_by_its_chain_id(tmp_path: Path) -> None:
    chain = good_chain(instance="pod-7")
    log = chain.write(tmp_path / "audit.jsonl")
    found = fast_fleet.results(inputs.expand([str(log)]), fast_checks(tmp_path), outcome_of,
                               jobs=1, filters=None)
    assert found is not None and len(found) == 1
    result = found[0]
    chain_id = chain.records[0]["chain"]
    assert (result.key, result.label, result.instance, result.ok) == (
        chain_id, chain_id, "pod-7", True)


def test_a_signed_note_given_as_a_file_is_left_to_the_general_path(tmp_path: Path) -> None:
    log = good_chain().write(tmp_path / "audit.jsonl")
    as_note = inputs.Input(str(log), lambda: open(log, "rb"), note=True)
    assert fast_fleet.plan([as_note]) is None
    assert fast_fleet.plan([inputs.Input(str(log), lambda: open(log, "rb"))]) is not None


def test_a_seq_hash_checkpoint_over_two_chains_is_left_to_the_general_path(
        tmp_path: Path) -> None:
    first = good_chain(instance="pod-1")
    paths = [first.write(tmp_path / "a.jsonl"),
             good_chain(instance="pod-2").write(tmp_path / "b.jsonl")]
    record = first.records[5]
    checks = fast_checks(tmp_path, [f"{record['seq']}:{record['hash']}"])
    items = inputs.expand([str(p) for p in paths])
    assert fast_fleet.results(items, checks, outcome_of, jobs=1, filters=None) is None
    # The general path refuses it, as a usage error naming why.
    with pytest.raises(Usage, match="names a record of one chain"):
        run(paths, tmp_path, fast=False, checkpoints=[f"{record['seq']}:{record['hash']}"])


def test_query_rows_past_the_memory_limit_go_to_runs_in_the_rows_folder(
        tmp_path: Path, monkeypatch: Any) -> None:
    from gateway.audit import query, row_runs

    monkeypatch.setattr(query, "RowRuns", lambda folder: row_runs.RowRuns(folder, limit=3))
    log = good_chain(40, 9).write(tmp_path / "audit.jsonl")
    folder = tmp_path / "rows"
    folder.mkdir()
    items = inputs.expand([str(log)])
    found = fast_fleet.results(items, fast_checks(tmp_path), outcome_of, jobs=1,
                               filters=Filters(), rows_folder=str(folder))
    assert found is not None
    rows = found[0].rows
    assert len(rows.runs) >= 5 and all(Path(run).parent == folder for run in rows.runs)
    in_order = [(ts, seq) for ts, _, seq, _ in rows.sorted()]
    assert len(in_order) >= 15 and in_order == sorted(in_order)



@pytest.mark.parametrize(("chains", "jobs", "forked"), [
    (3, 1, False), (1, 2, False), (2, 2, True), (3, 2, True)])
def test_jobs_check_chains_in_worker_processes_only_when_there_are_several(
        tmp_path: Path, monkeypatch: Any, chains: int, jobs: int, forked: bool) -> None:
    import os

    from gateway.audit import fast_chain

    where = tmp_path / "pids"
    real = fast_chain.check

    def noting(*args: Any, **kwargs: Any) -> Any:
        with open(where, "a") as out:  # forked workers inherit this patch
            out.write(f"{os.getpid()}\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(fast_chain, "check", noting)
    folder = tmp_path / "fleet"
    folder.mkdir()
    for n in range(chains):
        good_chain(12, 5, instance=f"pod-{n}").write(folder / f"pod-{n}.jsonl")
    found = fast_fleet.results(inputs.expand([str(folder)]), fast_checks(tmp_path), outcome_of,
                               jobs=jobs, filters=None)
    assert found is not None and len(found) == chains
    pids = where.read_text().split()
    assert len(pids) == chains
    assert (str(os.getpid()) not in pids) == forked
    assert len(set(pids)) <= jobs


# -- the general way's ordered copy: checked in one pass too, with the same answers ----------


def test_a_good_chain_read_the_general_way_is_checked_in_one_pass(
        tmp_path: Path, monkeypatch: Any) -> None:
    from gateway.audit import fast_chain

    answered = []
    real = fast_chain.check

    def noting(*args: Any, **kwargs: Any) -> Any:
        answered.append(real(*args, **kwargs))
        return answered[-1]

    monkeypatch.setattr(fast_chain, "check", noting)
    lines = good_chain(30, 7).lines
    shipped = tmp_path / "shipped.jsonl.gz"  # shipped twice over, compressed
    shipped.write_bytes(gzip.compress(b"".join(lines[:20] + lines[10:])))
    status, out, err, _ = same([shipped], tmp_path)
    assert status == 0 and f"ok: {len(lines)} records" in out and err == ""
    assert answered and all(passed is not None for passed in answered)
