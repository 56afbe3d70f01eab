"""`chroma-sync-gateway demo`: the whole gateway against an embedded Chroma Sync stand-in.

Nothing to configure and no Chroma account: a stand-in for Chroma Sync runs on loopback with
invocations across two databases, the gateway is wired to it with a generated token and two
demo teams of different scopes, and ready-to-paste `curl` commands are printed: one that
cancels, one that is refused as out of scope. Files (token, config, audit log) live in a temporary
folder that is removed on exit.
"""

from __future__ import annotations

import secrets
import shlex
import socket
import sys
import tempfile
from pathlib import Path

from gateway.access import keys
from gateway.config import load as config
from gateway.config import model
from gateway.demo.seed import API_SOURCE, DOCS_SOURCE, IMAGES_SOURCE, WEB_SOURCE, Seeded, seed
from gateway.demo.standin import StandIn
from gateway.server import protocol as server
from gateway.server.app import Gateway
from gateway.telemetry import logs

DEMO_TEAMS = (("docs", ["database:docs"]), ("search", ["collection:search/web"]))


def free_port(preferred: int) -> int:
    """`preferred` if it can be bound on loopback, else any free port."""
    for candidate in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free port on loopback")


def demo_config(
    folder: Path, upstream_url: str, port: int, team_keys: dict[str, str], token: str
) -> model.Config:
    (folder / "token").write_text(token + "\n")
    (folder / "token").chmod(0o600)
    return config.parse(
        {
            "server": {"host": "127.0.0.1", "port": port},
            "upstream": {
                "base_url": upstream_url,
                "token_file": str(folder / "token"),
                "connect_timeout": 2.0,
                "timeout": 10.0,
            },
            "audit": {"path": str(folder / "audit.jsonl"), "fsync": True},
            "teams": [
                {"name": name, "keys": [keys.stored_form(team_keys[name])], "scope": scope}
                for name, scope in DEMO_TEAMS
            ],
        },
        source="demo",
    )


def run(*, port: int = 8080) -> int:
    logs.configure()
    team_keys = {name: keys.new_key() for name, _ in DEMO_TEAMS}
    with tempfile.TemporaryDirectory(prefix="chroma-sync-gateway-demo-") as tmp:
        folder = Path(tmp)
        token = f"demo-{secrets.token_urlsafe(24)}"
        standin = StandIn(token=token)
        with standin.run_in_thread():
            cfg = demo_config(folder, standin.base_url, free_port(port), team_keys, token)
            seeded = seed(standin)

            def announce(gateway: Gateway, srv: server.GatewayServer) -> None:
                _print_instructions(cfg, team_keys, seeded, gateway.audit.path)

            return server.serve(cfg, on_ready=announce)


def _print_instructions(
    cfg: model.Config, team_keys: dict[str, str], seeded: Seeded, audit_path: str
) -> None:
    base = f"http://{cfg.server.host}:{cfg.server.port}"

    def curl(key: str, invocation: str) -> str:
        return (f"curl -i -X PUT -H {shlex.quote('Authorization: Bearer ' + key)} "
                f"{base}/api/v1/invocations/{invocation}")

    docs_key, search_key = team_keys["docs"], team_keys["search"]
    verify = f"{shlex.quote(sys.executable)} -m gateway audit verify {shlex.quote(audit_path)}"
    out = sys.stdout
    out.write(
        "\nchroma-sync-gateway demo is serving on "
        f"{base} (Chroma Sync stand-in at {cfg.upstream.base_url})\n\n"
        f"Demo team key (team 'docs', scope database:docs): {docs_key}\n"
        f"Demo team key (team 'search', scope collection:search/web): {search_key}\n\n"
        "Team 'docs' cancels a pending invocation of its database (202; again, 412):\n\n"
        f"  {curl(docs_key, seeded.docs_pending[0])}\n\n"
        "Team 'docs' tries an invocation of the search database (403 out_of_scope):\n\n"
        f"  {curl(docs_key, seeded.search_pending[0])}\n\n"
        f"Other pending invocations: docs {', '.join(seeded.docs_pending[1:])}; "
        f"search {', '.join(seeded.search_pending[1:])}\n"
        f"Sources: docs/handbook {DOCS_SOURCE}, docs/api-reference {API_SOURCE}, "
        f"search/web {WEB_SOURCE}, search/images {IMAGES_SOURCE}\n"
        f"Audit log: {audit_path}\n"
        f"  verify it with: {verify}\n"
        f"Metrics: {base}/metrics   Readiness: {base}/readyz\n\n"
        "Press Ctrl-C to stop (the temporary files are removed).\n\n"
    )
    out.flush()
