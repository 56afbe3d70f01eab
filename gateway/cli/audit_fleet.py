"""`audit verify` over a fleet (`--jobs`) and `audit query`: their arguments and dispatch."""

from __future__ import annotations

import argparse
import sys
from typing import Any

FORMATS = ("table", "jsonl", "csv")  # `gateway.audit.query.FORMATS`, not imported by the server

EXIT_USAGE = 2


def add_verify_options(verify: argparse.ArgumentParser) -> None:
    verify.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="verify N chains at once (default 1)")


def add_query_parser(actions: Any, with_arguments: bool) -> None:
    q = actions.add_parser(
        "query", help="who cancelled what: cancel results of verified logs, oldest first")
    if not with_arguments:
        return
    q.add_argument("paths", nargs="+", metavar="PATH|URL")
    q.add_argument("--team")
    q.add_argument("--key-id")
    q.add_argument("--invocation", metavar="ID")
    q.add_argument("--database", metavar="D")
    q.add_argument("--collection", metavar="C")
    q.add_argument("--source", metavar="UUID")
    q.add_argument("--outcome", action="append", default=[], metavar="O",
                   help="repeat for several outcomes")
    q.add_argument("--batch", metavar="ID")
    q.add_argument("--since", metavar="TS", help="RFC 3339, inclusive")
    q.add_argument("--until", metavar="TS", help="RFC 3339, exclusive")
    q.add_argument("--format", choices=FORMATS, default="table")
    q.add_argument("--public-key", action="append", default=[], metavar="VKEY")
    q.add_argument("--hmac-key-file", action="append", default=[])
    q.add_argument("--no-verify", action="store_true",
                   help="rows even when the records do not verify")
    q.add_argument("--jobs", type=int, default=1, metavar="N")


def run_verify(args: argparse.Namespace) -> int:
    from gateway.audit import verify as audit_verify
    from gateway.audit import verify_fleet

    if args.jobs < 1:
        print("audit verify: --jobs must be 1 or more", file=sys.stderr)
        return EXIT_USAGE
    if verify_fleet.is_legacy(args.paths):
        return audit_verify.run(args.paths, args.hmac_key_file, args.checkpoint,
                                args.allow_partial, sys.stdout, sys.stderr,
                                public_keys=args.public_key)
    return verify_fleet.run_verify(args.paths, args.hmac_key_file, args.checkpoint,
                                   args.allow_partial, args.jobs, sys.stdout, sys.stderr,
                                   public_keys=args.public_key)


def run_query(args: argparse.Namespace) -> int:
    from gateway.audit import query as audit_query
    from gateway.audit import verify_fleet

    try:
        filters = audit_query.Filters(
            team=args.team, key_id=args.key_id, invocation=args.invocation,
            database=args.database, collection=args.collection, source=args.source,
            outcomes=frozenset(args.outcome), batch=args.batch,
            since=audit_query.parse_time(args.since) if args.since else None,
            until=audit_query.parse_time(args.until) if args.until else None,
        )
    except ValueError as exc:
        print(f"audit query: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.jobs < 1:
        print("audit query: --jobs must be 1 or more", file=sys.stderr)
        return EXIT_USAGE
    return verify_fleet.run_query(args.paths, filters, args.format, args.hmac_key_file,
                                  args.no_verify, args.jobs, sys.stdout, sys.stderr,
                                  public_keys=args.public_key)
