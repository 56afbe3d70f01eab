"""`audit verify` and `audit query` in one pass, when the inputs are whole chains of good records.

The general path (`gateway.audit.fleet`) reads every input, spills each line to its chain,
puts each chain in seq order, writes it out and verifies the copy: it takes any inputs in any
order and names any problem exactly. Most runs are simpler: plain files, each chain's files
holding its records in seq order, every record good. For those this module plans the chains
from each file's first line (chain, seq), walks each chain's files once with
`gateway.audit.fast_chain` (`--jobs N`: N chains at once) and answers what the general path
would, word for word. Anything else (an archive, stdin, gzip or CRI input, a file that starts
mid-chain of another, a record that does not verify, `--allow-partial`) returns None, and the
caller runs the general path, which decides.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from gateway.audit import fast_chain, fleet, inputs, verify
from gateway.audit.chain_tree import CHAIN_ID
from gateway.audit.query import Filters, Query
from gateway.audit.row_runs import Rows


@dataclass(frozen=True)
class Checks:
    """What every chain is held to (the verb's options)."""

    hmac_keys: tuple[bytes, ...]
    checkpoints: tuple[tuple[int, str], ...]
    verifiers: tuple[Any, ...]
    anchors: tuple[Any, ...]


Outcome = Callable[[verify.VerifyOk], fleet.ChainOutcome]
"""How the verb words a chain that verified (`verify_fleet.outcome_of`)."""


def plan(items: Sequence[inputs.Input]) -> list[fast_chain.ChainFiles] | None:
    """Each chain's files, oldest first, from their first lines; None unless every input is a
    plain file whose first line is a record with a chain, and no two files of a chain start
    at the same seq."""
    starts: dict[str, list[tuple[int, str]]] = {}
    for item in items:
        if item.note or not os.path.isfile(item.name):
            return None
        try:
            first = fast_chain.first_record(item.name)
        except OSError:
            return None  # the general path reports it
        if first is None:
            return None
        chain, seq = first
        starts.setdefault(chain, []).append((seq, item.name))
    chains = []
    for chain, files in sorted(starts.items()):
        files.sort()
        if len({seq for seq, _ in files}) != len(files):
            return None
        chains.append(fast_chain.ChainFiles(chain, tuple(path for _, path in files)))
    return chains


def results(items: Sequence[inputs.Input], checks: Checks, outcome: Outcome, *, jobs: int,
            filters: Filters | None, rows_folder: str | None = None
            ) -> list[fleet.ChainResult] | None:
    """One result per chain, in chain order, as the general path gives them; None when the
    general path must decide."""
    chains = plan(items)
    if not chains or (len(chains) > 1 and checks.checkpoints):
        return None  # (the general path refuses --checkpoint SEQ:HASH over several chains)
    wanted = _wanted(checks)  # one chain's, or none
    if wanted is None:
        return None
    work = [_Job(files, checks, wanted, filters, rows_folder) for files in chains]
    if jobs <= 1 or len(work) <= 1:
        passed = [job.run() for job in work]
    else:
        passed = _forked(work, jobs)
    if any(p is None for p in passed):
        return None
    return [_result(files, p, outcome) for files, p in zip(chains, passed, strict=True)
            if p is not None]


def ordered_copy(copy: str, chain: str, checks: Checks) -> verify.VerifyOk | None:
    """The general path's ordered copy of `chain` checked in one pass; None when the single-log
    verifier must decide (it names any problem)."""
    wanted = _wanted(checks)
    if wanted is None or not CHAIN_ID.fullmatch(chain):
        return None  # (an earlier version's log has no chain to hold its records to)
    passed = fast_chain.check(fast_chain.ChainFiles(chain, (copy,)), keys=checks.hmac_keys,
                              verifiers=checks.verifiers, anchors=checks.anchors,
                              wanted=wanted)
    # The walk holds a chain to the anchors of its own origin only; the verifier reports one
    # of another origin, so such a chain is left to it.
    if passed is None or any(a.checkpoint.origin != passed.origin for a in checks.anchors):
        return None
    return passed.ok


def _wanted(checks: Checks) -> dict[int, str] | None:
    try:
        return verify.checkpoint_map(checks.checkpoints)
    except ValueError:
        return None  # the general path reports it


def _result(files: fast_chain.ChainFiles, passed: _Passed, outcome: Outcome
            ) -> fleet.ChainResult:
    said = outcome(passed.passed.ok)
    return fleet.ChainResult(files.chain, files.chain, passed.passed.instance, True, said.text,
                             list(said.warnings), passed.rows, origin=passed.passed.origin)


@dataclass(frozen=True)
class _Passed:
    passed: fast_chain.Passed
    rows: Rows


@dataclass(frozen=True)
class _Job:
    files: fast_chain.ChainFiles
    checks: Checks
    wanted: dict[int, str]
    filters: Filters | None
    rows_folder: str | None

    def run(self) -> _Passed | None:
        query = Query(self.filters, self.rows_folder) if self.filters is not None else None
        each = None
        if query is not None:
            label = self.files.chain

            def each(record: dict[str, Any]) -> None:
                query.add(record, label)

        passed = fast_chain.check(self.files, keys=self.checks.hmac_keys,
                                  verifiers=self.checks.verifiers, anchors=self.checks.anchors,
                                  wanted=self.wanted, each=each,
                                  needles=query.filters.needles() if query else ())
        if passed is None:
            return None
        return _Passed(passed, query.rows if query is not None else Rows())


_forked_jobs: list[_Job] = []


def _run_forked(index: int) -> _Passed | None:
    return _forked_jobs[index].run()


def _forked(work: list[_Job], jobs: int) -> list[_Passed | None]:
    # Workers are forked and take their job by index: verifier keys are not picklable.
    global _forked_jobs
    _forked_jobs = work
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            return list(pool.map(_run_forked, range(len(work))))
    finally:
        _forked_jobs = []
