"""The command line: serve, check-config, keys, audit (gateway.cli.audit), bulk-cancel, demo,
standin.

Exit status: 0 success, 2 usage or configuration error, 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.cli import audit as audit_cli
from gateway.errors import ConfigError

if TYPE_CHECKING:  # the config and key modules load for the commands that use them: the
    from gateway.config import model  # auditors' verbs start faster (`audit prove` ~50 ms)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


Wanted = Callable[..., bool]
"""Whether the command (and action) named gets its arguments: `wanted("audit", "prove")`."""


def wanted_by(argv: Sequence[str] | None) -> Wanted:
    """Only what `argv` names (its first words that are not options: no command or action here
    takes an option before its name); everything when None."""
    if argv is None:
        return lambda *names: True
    words = [word for word in argv if not word.startswith("-")]
    return lambda *names: words[:len(names)] == list(names)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Every command and action, listed for help and for "invalid choice"; their arguments only
    for the one `argv` names (all with None). argparse takes ~70 us an argument, and the
    whole tree was ~5 ms of an `audit prove --index`'s ~45 ms."""
    wanted = wanted_by(argv)
    parser = argparse.ArgumentParser(
        prog="chroma-sync-gateway",
        description="An authenticating, auditing gateway for Chroma Sync cancellations.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="serve the gateway")
    if wanted("serve"):
        serve.add_argument("--config", help="config file (default: "
                           "$CHROMA_SYNC_GATEWAY_CONFIG, else ./config.toml)")
        serve.add_argument("--host", help="listen address (overrides server.host)")
        serve.add_argument("--port", type=int, help="listen port (overrides server.port)")

    check = commands.add_parser("check-config", help="validate a config file and summarize it")
    if wanted("check-config"):
        check.add_argument("--config")
        check.add_argument("--strict", action="store_true",
                           help="also fail on what would make the gateway fail closed at start "
                           "(token, HMAC key, audit folder, CA file); warn about unrestricted "
                           "teams")

    key_parser = commands.add_parser("keys", help="make and hash team keys")
    if wanted("keys"):
        _add_keys(key_parser, wanted)

    audit_cli.add_parser(commands, wanted)

    bulk = commands.add_parser(
        "bulk-cancel", help="cancel every pending invocation of a source or a database",
        description="Call a running gateway's bulk cancel with the team key from "
        "$CHROMA_SYNC_GATEWAY_KEY.")
    if wanted("bulk-cancel"):
        bulk.add_argument("--url", required=True, help="the gateway, e.g. http://127.0.0.1:8080")
        selector = bulk.add_mutually_exclusive_group(required=True)
        selector.add_argument("--source", metavar="UUID", help="a source's id")
        selector.add_argument("--database", metavar="NAME", help="a database's name")
        bulk.add_argument("--dry-run", action="store_true", help="list what would be cancelled")
        bulk.add_argument("--limit", type=int, metavar="N",
                          help="at most this many invocations (1 to 10000; default 1000)")

    demo = commands.add_parser("demo", help="run against an embedded Chroma Sync stand-in")
    if wanted("demo"):
        demo.add_argument("--port", type=int, default=8080,
                          help="port to try first (default 8080; a free one if it is taken)")

    standin = commands.add_parser(
        "standin", help="run the embedded Chroma Sync stand-in on loopback, to try `serve`")
    if wanted("standin"):
        standin.add_argument("--host", default="127.0.0.1", help="a loopback address")
        standin.add_argument("--port", type=int, default=8765,
                             help="default 8765 (0: any free)")
        standin.add_argument("--token-file", metavar="FILE", help="the token it accepts: read "
                             "from FILE, or made and written there")
        standin.add_argument("--seed", type=int, default=1,
                             help="seed of the invocation ids it holds (default 1)")
    return parser


def _add_keys(key_parser: argparse.ArgumentParser, wanted: Wanted) -> None:
    key_commands = key_parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new = key_commands.add_parser("new", help="print a new team key and its stored form")
    if wanted("keys", "new"):
        new.add_argument("--team", required=True)
        new.add_argument("--out", metavar="FILE", help="write the key to FILE (created with "
                         "mode 0600) instead of printing it")
    key_commands.add_parser("hash", help="read a key on stdin, print its stored form")
    trial = key_commands.add_parser(
        "jwks", help="make a throwaway issuer to try workload identity: a JWKS and a token")
    if wanted("keys", "jwks"):
        trial.add_argument("--out-dir", required=True, metavar="DIR",
                           help="folder for jwks.json and token (must not hold them yet)")
        trial.add_argument("--service-account", required=True, metavar="NAMESPACE/NAME")
        trial.add_argument("--issuer", default="https://kubernetes.default.svc.cluster.local")
        trial.add_argument("--audience", default="chroma-sync-gateway")
        trial.add_argument("--hours", type=float, default=1.0,
                           help="token lifetime (default 1)")


def main(argv: Sequence[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(given).parse_args(given)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILURE


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "keys":
        return _keys(args)
    if args.command == "audit":
        return audit_cli.run(args, sys.stdout, sys.stderr)
    if args.command == "check-config":
        from gateway.config import load as config

        return _check_config(config.load(config.config_path(args.config)), strict=args.strict)
    if args.command == "bulk-cancel":
        from gateway.cli import bulk as bulk_cli

        return bulk_cli.run(url=args.url, source=args.source, database=args.database,
                            dry_run=args.dry_run, limit=args.limit, env=os.environ,
                            out=sys.stdout, err=sys.stderr)
    if args.command == "demo":
        from gateway.demo import run as demo

        return demo.run(port=args.port)
    if args.command == "standin":
        from gateway.cli import standin

        return standin.run(host=args.host, port=args.port, token_file=args.token_file,
                           seed_value=args.seed, out=sys.stdout, err=sys.stderr)
    return _serve(args)


def _keys(args: argparse.Namespace) -> int:
    from gateway.access import keys
    from gateway.config.teams import TEAM_NAME_RE

    if args.keys_command == "new":
        if not TEAM_NAME_RE.fullmatch(args.team):
            print("keys new: --team must be 1 to 64 of [A-Za-z0-9._-], starting alphanumeric "
                  "(as [[teams]] name), got " + ascii(args.team[:80]), file=sys.stderr)
            return EXIT_USAGE
        key = keys.new_key()
        if args.out is not None:
            try:
                descriptor = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as exc:
                print(f"keys new: --out {args.out}: {exc.strerror}", file=sys.stderr)
                return EXIT_USAGE
            with os.fdopen(descriptor, "w") as handle:
                handle.write(key + "\n")
        print(f"team:   {args.team}")
        print(f"key:    {'written to ' + args.out if args.out is not None else key}")
        print(f"stored: {keys.stored_form(key)}")
        print("Give the key to the team once; put only the stored form in the config "
              "([[teams]] keys).", file=sys.stderr)
        return EXIT_OK
    if args.keys_command == "jwks":
        from gateway.cli import trial_issuer

        return trial_issuer.run(folder=args.out_dir, service_account=args.service_account,
                                issuer=args.issuer, audience=args.audience, hours=args.hours,
                                out=sys.stdout, err=sys.stderr)
    data = sys.stdin.buffer.read()
    try:
        key = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        print("keys hash: the key on stdin is not UTF-8 text", file=sys.stderr)
        return EXIT_USAGE
    if not key or any(c.isspace() for c in key):
        print("keys hash: expected one key on stdin", file=sys.stderr)
        return EXIT_USAGE
    if not keys.is_team_key(key):
        # Not echoed: it may be some other secret pasted by mistake.
        print(f"keys hash: not a team key ({keys.KEY_PREFIX} and 43 URL-safe characters, "
              "as `keys new` prints)", file=sys.stderr)
        return EXIT_USAGE
    print(keys.stored_form(key))
    return EXIT_OK


def _check_config(cfg: model.Config, *, strict: bool = False) -> int:
    from gateway.access import keys
    from gateway.secrets.sources import fingerprint, upstream_token_source

    up = cfg.upstream
    print(f"config: {cfg.source}: ok")
    print(f"server: {cfg.server.host}:{cfg.server.port}")
    print(f"upstream: {up.base_url} (connect_timeout {up.connect_timeout:g} s, "
          f"timeout {up.timeout:g} s{', ca_file set' if up.ca_file else ''})")
    token = upstream_token_source(up.token_file, up.token_env)
    token.refresh()
    source = f"file {up.token_file}" if up.token_file else f"env {up.token_env}"
    state = (f"loaded, fingerprint {fingerprint(token.value)}" if token.value
             else f"NOT USABLE: {token.problem}")
    print(f"upstream token: {source}: {state}")
    a = cfg.audit
    print(f"audit: {a.path} (fsync {'on' if a.fsync else 'off'}, "
          f"hmac {'on' if a.hmac_key_file else 'off'}, stdout {'on' if a.stdout else 'off'}, "
          f"rotation {f'at {a.max_bytes} bytes' if a.max_bytes else 'off'}, "
          f"record_context {'on' if a.record_context else 'off'}, "
          f"signing {'on' if a.signing_key_file else 'off'})")
    print(f"teams: {len(cfg.teams)}")
    for team in cfg.teams:
        print(f"  {team.name}: {len(team.keys)} key(s) "
              f"[{', '.join(keys.key_id(k) for k in team.keys)}], "
              f"{'enabled' if team.enabled else 'DISABLED'}, "
              f"{team.rate_limit:g}/s burst {team.burst}, "
              f"scope {', '.join(team.scope.entries())}")
        if team.service_accounts:
            print(f"    service accounts: {', '.join(team.service_accounts)}")
    if cfg.issuers:
        from gateway.access.identity import jwks_state

        print(f"issuers: {len(cfg.issuers)}")
        for issuer in cfg.issuers:
            print(f"  {issuer.name}: iss {issuer.issuer}, audience {issuer.audience}, "
                  f"jwks {issuer.jwks_file}: {jwks_state(issuer.jwks_file)}")
    if not strict:
        return EXIT_OK
    from gateway.config.preflight import strict_findings

    findings = strict_findings(cfg)
    problems = list(findings.problems)
    if a.signing_key_file:
        from gateway.audit.signing import strict_problem

        problem = strict_problem(a.signing_key_file, token.value)
        if problem is not None:
            problems.append(f"{cfg.source}: audit.signing_key_file: {problem}")
    for warning in findings.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return EXIT_USAGE
    print("strict: ok")
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from gateway.audit.files import AuditLocked
    from gateway.config import load as config
    from gateway.server import protocol as server
    from gateway.server.protocol import CannotListen
    from gateway.telemetry import logs

    cfg = config.load(config.config_path(args.config))
    if args.port is not None and not 0 <= args.port <= 65535:
        print(f"--port must be from 0 to 65535, got {args.port}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure()
    try:
        return server.serve(cfg, host=args.host, port=args.port)
    except AuditLocked as exc:
        print(f"{cfg.source}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except CannotListen as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return EXIT_FAILURE
