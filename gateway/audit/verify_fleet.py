"""The `audit verify` and `audit query` verbs over any inputs: one line per chain.

`run_verify` and `run_query` take the parsed arguments and return the exit status: 0 when every
chain verifies, 1 when one does not (or an input could not be read through), 2 on usage (one
line on stderr). A run over plain files that hold no `chain` at all (logs of an earlier
version) is verified and reported as in 0.2: the files, in the order given, are one chain.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, TextIO

from gateway.audit import fast_fleet, fleet, grouping, inputs, query, row_runs, verify
from gateway.audit.archive import location
from gateway.secrets.sources import InvalidSecret, load_hmac_key


@dataclass(frozen=True)
class Options:
    hmac_keys: tuple[bytes, ...] = ()
    checkpoints: tuple[tuple[int, str], ...] = ()
    allow_partial: bool = False
    verifiers: tuple[Any, ...] = ()
    """`note.Verifier`s (--public-key): every signed note must verify with one."""
    anchors: tuple[Any, ...] = ()
    """`tree_check.Anchor`s (--checkpoint NOTE_FILE), each for the chain of its origin."""


class Usage(Exception):
    pass


def is_legacy(paths: Sequence[str]) -> bool:
    """Plain files whose first records have no `chain`: logs of an earlier version, which
    `audit verify` checks and reports as in 0.2 (the files, in the order given, one chain)."""
    for path in paths:
        if path == "-" or location.is_archive_url(path) or not os.path.isfile(path):
            return False
        try:
            with open(path, "rb") as handle:
                first = next(inputs.records(handle), None)
        except OSError:
            return True  # the 0.2 verifier names the problem as it always did
        if first is not None and grouping.chain_of(first[1]) is not None:
            return False
    return True


def options_from(hmac_key_files: Sequence[str], checkpoint_texts: Sequence[str],
                 allow_partial: bool, public_keys: Sequence[str] = ()) -> Options:
    keys = []
    for key_file in hmac_key_files:
        try:
            keys.append(load_hmac_key(key_file))
        except InvalidSecret as exc:
            raise Usage(f"--hmac-key-file {key_file}: {exc}") from None
    verifiers: list[Any] = []
    if public_keys:
        from gateway.audit.signing import verifier_from_arg  # loads cryptography

        for text in public_keys:
            try:
                verifiers.append(verifier_from_arg(text))
            except ValueError as exc:
                raise Usage(f"--public-key: {exc}") from None
    checkpoints = []
    anchors: list[Any] = []
    for text in checkpoint_texts:
        try:
            if verify.is_seq_hash(text):
                checkpoints.append(verify.parse_checkpoint(text))
            elif not verifiers:
                raise ValueError(f"{text} is a signed checkpoint: give --public-key to verify it")
            else:
                with open(text, "rb") as handle:
                    anchors.append(verify.anchor_from_note(text, handle.read(65536), verifiers))
        except ValueError as exc:
            raise Usage(f"--checkpoint: {exc}") from None
        except OSError as exc:
            raise Usage(f"--checkpoint: {text}: can't read ({exc.strerror})") from None
    return Options(tuple(keys), tuple(checkpoints), allow_partial, tuple(verifiers),
                   tuple(anchors))


def outcome_of(result: verify.VerifyOk) -> fleet.ChainOutcome:
    """How a chain that verified is reported: `ok: ...`, and its warnings."""
    signed = result.signed
    text = (f"ok: {result.records} records, seq {result.first_seq}..{result.head_seq}, "
            f"head {result.head_hash}")
    if signed is not None:
        text += f", signed at tree size {signed[0]} by {signed[1]}"
    warnings = []
    if result.first_seq > 1:  # said on stdout, after the chain's line, as in 0.2
        how = (f"anchored by checkpoint seq {result.anchor}" if result.anchor is not None
               else "not anchored by any checkpoint (--allow-partial)")
        text += (f"\nstarted at seq {result.first_seq}: a retained suffix (records before "
                 f"it are not in the files given), {how}")
    if result.macs_unchecked:
        warnings.append("the records carry a mac, but no --hmac-key-file was given")
    if result.notes_unchecked:
        warnings.append("the checkpoints carry signed notes, but no --public-key was given")
    if result.roots_unchecked:
        warnings.append("starts after seq 1: Merkle roots before it could not be recomputed")
    return fleet.ChainOutcome(True, text, 0, tuple(warnings))


def single_chain(options: Options, several: bool, one_pass: bool = True
                 ) -> fleet.SingleChainVerify:
    """The single-chain verifier, as `fleet` calls it on each chain's ordered copy. `one_pass`:
    a whole, good copy is checked by `fast_chain` first (False: by the verifier alone)."""

    def check(copy: str, job: fleet.ChainJob, origin: str | None) -> fleet.ChainOutcome:
        anchors = [a for a in options.anchors if a.checkpoint.origin == origin]
        if options.verifiers:  # an archive's checkpoint objects must verify, and be held
            for item in job.notes:
                try:
                    anchors.append(verify.anchor_from_note(item.source, item.text,
                                                           options.verifiers))
                except ValueError as exc:
                    return fleet.ChainOutcome(False, f"checkpoint object {exc}")
        checkpoints = () if several else options.checkpoints
        quick = None
        if one_pass and not options.allow_partial:  # (a suffix: the verifier's alone)
            quick = fast_fleet.ordered_copy(copy, job.key, fast_fleet.Checks(
                options.hmac_keys, tuple(checkpoints), options.verifiers, tuple(anchors)))
        if quick is not None:
            return outcome_of(quick)
        result = verify.verify([copy], hmac_keys=options.hmac_keys,
                               checkpoints=checkpoints,
                               allow_partial=options.allow_partial,
                               verifiers=options.verifiers, anchors=anchors)
        if isinstance(result, verify.VerifyFailure):
            return fleet.ChainOutcome(False, result.reason, result.line)
        return outcome_of(result)

    return check


@dataclass
class Verified:
    status: int
    results: list[fleet.ChainResult]


def verify_inputs(paths: Sequence[str], options: Options, *, jobs: int, out: TextIO,
                  err: TextIO, stdin: IO[bytes] | None, filters: query.Filters | None,
                  verb: str, check_chains: bool = True, fast: bool = True,
                  rows_folder: str | None = None) -> Verified:
    """Read, verify and report (one line per chain on `out`, unless querying). `fast`: try
    `fast_fleet` first, and `fast_chain` on each chain's ordered copy (False: the single-log
    verifier alone, which tests hold the one-pass checks to)."""
    try:
        items = inputs.expand(paths, stdin=stdin)
    except inputs.InputError as exc:
        raise Usage(str(exc)) from None
    problems: list[str] = []
    quick = None
    if fast and check_chains and not options.allow_partial:
        checks = fast_fleet.Checks(options.hmac_keys, options.checkpoints, options.verifiers,
                                   options.anchors)
        quick = fast_fleet.results(items, checks, outcome_of, jobs=jobs, filters=filters,
                                   rows_folder=rows_folder)
    if quick is not None:
        results = quick
    else:
        read = fleet.read(items)
        problems = read.problems
        try:
            for problem in problems:
                print(problem, file=out)
            keys = read.group.keys()
            several = len(keys) > 1
            if several and options.checkpoints:
                raise Usage("--checkpoint SEQ:HASH names a record of one chain; these inputs "
                            f"hold {len(keys)}: verify that chain's files on their own")
            results = fleet.verify_chains(read, single_chain(options, several, fast), jobs=jobs,
                                          filters=filters, check_chains=check_chains,
                                          rows_folder=rows_folder)
        finally:
            read.close()
    if not results and not problems:
        print(f"audit {verb}: no audit records in the inputs given", file=err)
    warned: set[str] = set()
    for result in results:
        if filters is None or not result.ok:
            print(result.line(), file=out)
        for warning in result.warnings:
            if warning not in warned:  # once for all chains
                warned.add(warning)
                print(f"audit {verb}: warning: {warning}: not checked", file=err)
    origins = {r.origin for r in results}
    stray = [a for a in options.anchors if a.checkpoint.origin not in origins]
    for anchor in stray:
        print(f"signed checkpoint {anchor.name}: no chain with origin "
              f"{anchor.checkpoint.origin!a} in the inputs given", file=out)
    bad = problems or stray or any(not r.ok for r in results) or not results
    return Verified(1 if bad else 0, results)


def run_verify(paths: Sequence[str], hmac_key_files: Sequence[str],
               checkpoint_texts: Sequence[str], allow_partial: bool, jobs: int,
               out: TextIO, err: TextIO, stdin: IO[bytes] | None = None,
               public_keys: Sequence[str] = ()) -> int:
    try:
        options = options_from(hmac_key_files, checkpoint_texts, allow_partial, public_keys)
        return verify_inputs(paths, options, jobs=jobs, out=out, err=err,
                             stdin=stdin if stdin is not None else sys.stdin.buffer,
                             filters=None, verb="verify").status
    except Usage as exc:
        print(f"audit verify: {exc}", file=err)
        return 2


def run_query(paths: Sequence[str], filters: query.Filters, fmt: str,
              hmac_key_files: Sequence[str], no_verify: bool, jobs: int,
              out: TextIO, err: TextIO, stdin: IO[bytes] | None = None,
              public_keys: Sequence[str] = ()) -> int:
    """`audit query`: rows only when every chain read verifies (or with `no_verify`). Rows
    past `row_runs.RUN_ROWS` a chain wait on disk in a private temporary folder, sorted."""
    with tempfile.TemporaryDirectory(prefix="audit-query-") as folder:
        try:
            options = options_from(hmac_key_files, (), False, public_keys)
            verified = verify_inputs(paths, options, jobs=jobs, out=err, err=err,
                                     stdin=stdin if stdin is not None else sys.stdin.buffer,
                                     filters=filters, verb="query", check_chains=not no_verify,
                                     rows_folder=folder)
        except Usage as exc:
            print(f"audit query: {exc}", file=err)
            return 2
        if verified.status != 0 and not no_verify:
            print("audit query: the records do not verify: no rows", file=err)
            return 1
        rows = row_runs.merged(result.rows for result in verified.results)
        query.write(map(row_runs.row_of, rows), fmt, out)
    return 0
