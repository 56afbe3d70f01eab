"""`audit verify` (and `audit query`) over a fleet: any number of chains, in any order.

1. Every input is read once (`gateway.audit.inputs`: files, folders, stdin, archives; CRI
   lines unwrapped) and each line spilled to its chain (`gateway.audit.grouping`). Checkpoint
   objects of an archive are kept aside: a chain must not end before them.
2. Each chain, on its own (`--jobs N`: N at once, in worker processes), is put in seq order
   with exact duplicates dropped (a gap or two different records with one seq is the chain's
   problem), written out as one file, and verified by the single-chain verifier
   (`gateway.audit.verify`) exactly as one log is. A problem it names at a line of that file
   is reported at the input and line the record came from.
3. One line per chain: `chain <id> (<instance>): ok: N records, seq A..B, head <hash>[,
   signed at tree size T by <key name>]`, or `chain <id> (<instance>): <where>: <problem>`.

Memory: the spill files and the chain's ordered copy live in a private temporary folder; what
stays in memory is per chain (and, for `audit query`, the rows that match).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gateway.audit import grouping, inputs
from gateway.audit.archive import location
from gateway.audit.chain_tree import default_origin
from gateway.audit.query import Filters, Query
from gateway.audit.row_runs import Rows

_INDEX = struct.Struct("<IQ")  # input index, line number: where line N of the copy came from
_BUFFER = 256 * 1024
_CHAIN_EVENT, _OPENED_EVENT = b'"event":"audit.chain"', b'"event":"audit.opened"'
"""The records that name the chain's instance and origin."""


@dataclass(frozen=True)
class Note:
    """A checkpoint object of an archive: a tree size the chain must reach."""

    source: str
    chain: str
    tree_size: int
    text: bytes


@dataclass
class ChainResult:
    key: str
    label: str  # the chain id, or the file's name for a log without chains
    instance: str | None
    ok: bool
    text: str  # what follows `chain <label> (<instance>): `
    warnings: list[str] = field(default_factory=list)
    rows: Rows = field(default_factory=Rows)
    """`audit query`'s rows of this chain, with their sort keys."""
    origin: str | None = None  # the checkpoints' origin (the audit.chain record's)

    def line(self) -> str:
        who = f" ({self.instance})" if self.instance else ""
        return f"chain {self.label}{who}: {self.text}"


SingleChainVerify = Callable[[str, "ChainJob", str | None], "ChainOutcome"]
"""The single-chain verifier: (the chain's ordered copy, the job, the chain's origin)."""


@dataclass(frozen=True)
class ChainOutcome:
    """What the single-chain verifier said of the ordered copy."""

    ok: bool
    text: str  # `ok: ...` or the problem
    line: int = 0  # the copy's line the problem is at (0: the chain as a whole)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChainJob:
    key: str
    spill: str
    in_order: bool
    sources: tuple[str, ...]
    notes: tuple[Note, ...]
    filters: Filters | None
    verify: bool = True
    """False (`audit query --no-verify`): every record's row, whatever the chain's problems."""
    rows_folder: str | None = None
    """Where `audit query` may write sorted runs of rows (None: rows stay in memory)."""


@dataclass
class Fleet:
    """The inputs read and spilled per chain, ready to verify chain by chain."""

    group: grouping.Grouping
    notes: list[Note]
    problems: list[str]  # inputs that could not be read through (reported, exit 1)

    def close(self) -> None:
        self.group.close()


def read(items: Sequence[inputs.Input]) -> Fleet:
    group = grouping.Grouping()  # spill files in the system temp folder, removed at close
    notes: list[Note] = []
    problems: list[str] = []
    for item in items:
        if item.note:
            note = _note(item)
            if note is not None:
                notes.append(note)
            continue
        source = group.source(item.name)
        try:
            with item.open() as handle:
                for lineno, line in inputs.records(handle):
                    group.add(line, source, lineno)
        except OSError as exc:
            problems.append(f"{item.name}: can't be read ({exc.strerror or exc})")
    return Fleet(group, notes, problems)


def _note(item: inputs.Input) -> Note | None:
    name = item.name.rsplit("/", 3)
    found = location.parse_checkpoint("/".join(name[-3:])) if len(name) >= 3 else None
    if found is None:
        return None
    try:
        text = inputs.read_note(item)
    except OSError:
        return None
    return Note(item.name, found[0], found[1], text)


def verify_chains(
    fleet: Fleet, check: SingleChainVerify, *, jobs: int = 1, filters: Filters | None = None,
    check_chains: bool = True, rows_folder: str | None = None,
) -> list[ChainResult]:
    """Each chain verified on its own, `jobs` at once; results in chain order."""
    spills = fleet.group.finish()
    sources = tuple(fleet.group.sources)
    work = [ChainJob(key, path, key not in fleet.group.unsorted, sources,
                     tuple(n for n in fleet.notes if n.chain == key), filters, check_chains,
                     rows_folder)
            for key, path in sorted(spills.items(), key=lambda kv: _label(kv[0], sources))]
    if jobs <= 1 or len(work) <= 1:
        return [verify_chain(job, check) for job in work]
    # Workers are forked: they inherit the keys and the single-chain verifier as they are
    # (verifier keys are not picklable), through this module's global.
    global _forked_check
    _forked_check = check
    context = multiprocessing.get_context("fork")
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            return list(pool.map(_verify_forked, work))
    finally:
        _forked_check = None


_forked_check: SingleChainVerify | None = None


def _verify_forked(job: ChainJob) -> ChainResult:
    assert _forked_check is not None
    return verify_chain(job, _forked_check)


def _label(key: str, sources: Sequence[str]) -> str:
    return key[4:] if key.startswith("log:") else key


def verify_chain(job: ChainJob, check: SingleChainVerify) -> ChainResult:
    label = _label(job.key, job.sources)
    copy, index = job.spill + ".ordered", job.spill + ".index"
    instance: str | None = None
    origin = None if job.key.startswith("log:") else default_origin(job.key)
    head = 0
    try:
        with open(copy, "wb", buffering=_BUFFER) as out, \
                open(index, "wb", buffering=_BUFFER) as where:
            for item in grouping.ordered(job.spill, job.in_order, keep_going=not job.verify):
                if isinstance(item, grouping.Problem):
                    if not job.verify:
                        continue  # the line itself comes next
                    at = f"{job.sources[item.entry.source]}:{item.entry.lineno}"
                    return ChainResult(job.key, label, instance, False, f"{at}: {item.reason}",
                                       origin=origin)
                out.write(item.line)
                where.write(_INDEX.pack(item.source, item.lineno))
                head = item.seq
                if _CHAIN_EVENT in item.line or _OPENED_EVENT in item.line:
                    named, found = _identity(item.line)
                    instance = named or instance
                    origin = found or origin
        if not job.verify:
            return ChainResult(job.key, label, instance, True, "not verified", [],
                               _rows(copy, label, job) if job.filters else Rows())
        for note in job.notes:
            if note.tree_size > head:
                return ChainResult(job.key, label, instance, False,
                                   f"truncated: signed checkpoint at tree size "
                                   f"{note.tree_size}, records end at seq {head}",
                                   origin=origin)
        outcome = check(copy, job, origin)
        if not outcome.ok:
            at = _where(index, outcome.line, job.sources) if outcome.line else ""
            text = f"{at}: {outcome.text}" if at else outcome.text
            return ChainResult(job.key, label, instance, False, text, list(outcome.warnings),
                               origin=origin)
        result = ChainResult(job.key, label, instance, True, outcome.text,
                             list(outcome.warnings), origin=origin)
        if job.filters is not None:
            result.rows = _rows(copy, label, job)
        return result
    finally:
        for path in (copy, index):
            if os.path.exists(path):
                os.unlink(path)


def _identity(line: bytes) -> tuple[str | None, str | None]:
    """The `instance` and (in an `audit.chain` record) `origin` a record names."""
    try:
        record = json.loads(line)
    except ValueError:
        return None, None
    if not isinstance(record, dict):
        return None, None
    instance, origin = record.get("instance"), record.get("origin")
    return (instance if isinstance(instance, str) and instance else None,
            origin if isinstance(origin, str) and origin else None)


def _where(index: str, line: int, sources: Sequence[str]) -> str:
    with open(index, "rb") as handle:
        handle.seek((line - 1) * _INDEX.size)
        packed = handle.read(_INDEX.size)
    if len(packed) != _INDEX.size:
        return ""
    source, lineno = _INDEX.unpack(packed)
    return f"{sources[source]}:{lineno}"


def _rows(copy: str, label: str, job: ChainJob) -> Rows:
    assert job.filters is not None
    query = Query(job.filters, job.rows_folder)
    with open(copy, "rb", buffering=_BUFFER) as handle:
        for line in handle:
            if b'"event":"cancel.result"' not in line:
                continue
            record: Mapping[str, Any] = json.loads(line)
            query.add(record, label)
    return query.rows
