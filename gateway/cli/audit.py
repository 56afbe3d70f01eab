"""`chroma-sync-gateway audit ...`: verify, keygen, prove, check-proof.

Exit status: 0 success, 1 the log or proof does not hold, 2 bad input (one line, on stderr).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from gateway.cli import audit_fleet

if TYPE_CHECKING:  # cryptography is loaded by the verbs that sign or verify, not at start-up
    from gateway.audit import note

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def add_parser(commands: Any, wanted: Callable[..., bool]) -> None:
    """The `audit` command and its actions, on the main parser's subcommands; arguments only
    for the action `wanted` (see `gateway.cli.main.build_parser`)."""
    audit = commands.add_parser("audit", help="audit log tools")
    if not wanted("audit"):
        return
    actions = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    verify = actions.add_parser(
        "verify", help="verify logs of any number of chains: files, folders, -, archive URLs")
    if wanted("audit", "verify"):
        verify.add_argument("paths", nargs="+", metavar="PATH")
        verify.add_argument("--hmac-key-file", action="append", default=[],
                            help="the auditors' HMAC key (repeat for a rotated key)")
        verify.add_argument("--public-key", action="append", default=[], metavar="VKEY",
                            help="a verifier key (NAME+ID+BASE64) or a file holding one: every "
                            "signed checkpoint must verify (repeat for a rotated key)")
        verify.add_argument("--checkpoint", action="append", default=[],
                            metavar="SEQ:HASH|NOTE_FILE",
                            help="a checkpoint kept elsewhere that the log must contain")
        audit_fleet.add_verify_options(verify)
        verify.add_argument("--allow-partial", action="store_true",
                            help="accept a chain that starts after seq 1 (older files not given)")

    keygen = actions.add_parser("keygen", help="write a new checkpoint signing key, print its "
                                "verifier key")
    if wanted("audit", "keygen"):
        keygen.add_argument("--name", required=True,
                            help="the key name (e.g. audit.example.com/billing-gateway)")
        keygen.add_argument("--out", required=True, metavar="FILE",
                            help="the new key file (mode 0600; never overwritten)")

    prove = actions.add_parser("prove", help="print an inclusion or consistency proof")
    if wanted("audit", "prove"):
        prove.add_argument("paths", nargs="+", metavar="PATH")
        prove.add_argument("--chain", metavar="ID", help="the chain of the record to prove")
        prove.add_argument("--seq", type=int, metavar="S", help="the seq of the record to prove")
        prove.add_argument("--consistency", metavar="OLD_NOTE_FILE",
                           help="prove that the chain extends this older signed checkpoint")
        prove.add_argument("--checkpoint", metavar="NOTE_FILE",
                           help="prove against this signed checkpoint (default: the newest one "
                           "of the chain that covers it)")
        prove.add_argument("--index", metavar="INDEX_FILE",
                           help="a proof index of the chain: made when missing, brought up to "
                           "date when the files grew, then used (a proof reads O(log n) hashes)")

    audit_fleet.add_query_parser(actions, wanted("audit", "query"))

    check = actions.add_parser("check-proof", help="check a proof from `audit prove`")
    if wanted("audit", "check-proof"):
        check.add_argument("file", metavar="FILE")
        check.add_argument("--public-key", action="append", required=True, metavar="VKEY",
                           help="a verifier key (NAME+ID+BASE64) or a file holding one")


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    action = args.audit_command
    if action == "verify":
        return audit_fleet.run_verify(args)
    if action == "query":
        return audit_fleet.run_query(args)
    if action == "keygen":
        return _keygen(args.name, args.out, out, err)
    if action == "prove":
        return _prove(args, out, err)
    return _check_proof(args.file, args.public_key, out, err)


def _keygen(name: str, path: str, out: TextIO, err: TextIO) -> int:
    from gateway.audit.signing import write_new_key

    try:
        signer = write_new_key(path, name)
    except ValueError as exc:
        print(f"audit keygen: {exc}", file=err)
        return EXIT_USAGE
    except FileExistsError:
        print(f"audit keygen: {path} exists: a key file is never overwritten (move it away, or "
              f"choose another --out)", file=err)
        return EXIT_USAGE
    except OSError as exc:
        print(f"audit keygen: {path}: can't write ({exc.strerror})", file=err)
        return EXIT_USAGE
    print(signer.verifier.encoded, file=out)
    print(f"audit keygen: wrote the private key to {path} (mode 0600): set "
          f"audit.signing_key_file to it; give auditors the verifier key above", file=err)
    return EXIT_OK


def _prove(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from gateway.audit import prove

    def usage(message: str) -> int:
        print(f"audit prove: {message}", file=err)
        return EXIT_USAGE

    inclusion = args.chain is not None or args.seq is not None
    if inclusion == (args.consistency is not None):
        return usage("give either --chain ID --seq S (an inclusion proof) or --consistency "
                     "OLD_NOTE_FILE (a consistency proof)")
    def warn(message: str) -> None:
        print(f"audit prove: {message}", file=err)

    try:
        if inclusion:
            if args.chain is None or args.seq is None:
                return usage("an inclusion proof needs both --chain ID and --seq S")
            if args.index is not None:
                from gateway.audit import prove_indexed

                doc = prove_indexed.prove_inclusion(args.paths, args.chain, args.seq,
                                                    args.checkpoint, args.index, warn)
            else:
                doc = prove.prove_inclusion(args.paths, args.chain, args.seq, args.checkpoint)
        elif args.index is not None:
            from gateway.audit import prove_indexed

            doc = prove_indexed.prove_consistency(args.paths, args.consistency, args.checkpoint,
                                                  args.index, warn)
        else:
            doc = prove.prove_consistency(args.paths, args.consistency, args.checkpoint)
    except prove.ProveUsage as exc:
        return usage(str(exc))
    except prove.CannotProve as exc:
        print(f"audit prove: {exc}", file=err)
        return EXIT_FAILURE
    print(json.dumps(doc, ensure_ascii=False, indent=1), file=out)
    return EXIT_OK


def _check_proof(path: str, public_keys: list[str], out: TextIO, err: TextIO) -> int:
    from gateway.audit import proof_check
    from gateway.audit.signing import verifier_from_arg

    verifiers: list[note.Verifier] = []
    for text in public_keys:
        try:
            verifiers.append(verifier_from_arg(text))
        except ValueError as exc:
            print(f"audit check-proof: --public-key: {exc}", file=err)
            return EXIT_USAGE
    try:
        line = proof_check.check(proof_check.load(path), verifiers)
    except proof_check.ProofFileError as exc:
        print(f"audit check-proof: {exc}", file=err)
        return EXIT_USAGE
    except proof_check.ProofFailed as exc:
        print(f"audit check-proof: {path}: {exc}", file=out)
        return EXIT_FAILURE
    print(line, file=out)
    return EXIT_OK
