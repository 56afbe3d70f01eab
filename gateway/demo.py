"""`chroma-sync-gateway demo`: the whole gateway against an embedded Chroma Sync stand-in.

Nothing to configure and no Chroma account: a stand-in for Chroma Sync runs on loopback with a
few pending invocations, the gateway is wired to it with a generated token and a demo team key,
and a ready-to-paste `curl` is printed. Files (token, config, audit log) live in a temporary
folder that is removed on exit.
"""

from __future__ import annotations

import secrets
import shlex
import socket
import sys
import tempfile
from pathlib import Path

from gateway import config, keys, logs, server
from gateway.app import Gateway
from gateway.standin import StandIn

DEMO_INVOCATIONS = 3


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
    folder: Path, upstream_url: str, port: int, stored_key: str, token: str
) -> config.Config:
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
            "teams": [{"name": "demo", "keys": [stored_key], "scope": ["*"]}],
        },
        source="demo",
    )


def run(*, port: int = 8080) -> int:
    logs.configure()
    key = keys.new_key()
    with tempfile.TemporaryDirectory(prefix="chroma-sync-gateway-demo-") as tmp:
        folder = Path(tmp)
        token = f"demo-{secrets.token_urlsafe(24)}"
        standin = StandIn(token=token)
        with standin.run_in_thread():
            cfg = demo_config(
                folder, standin.base_url, free_port(port), keys.stored_form(key), token
            )
            pending = [standin.add_pending() for _ in range(DEMO_INVOCATIONS)]

            def announce(gateway: Gateway, srv: server.GatewayServer) -> None:
                _print_instructions(cfg, key, pending, gateway.audit.path)

            return server.serve(cfg, on_ready=announce)


def _print_instructions(cfg: config.Config, key: str, pending: list[str], audit_path: str) -> None:
    base = f"http://{cfg.server.host}:{cfg.server.port}"
    curl = (
        f"curl -i -X PUT -H {shlex.quote('Authorization: Bearer ' + key)} "
        f"{base}/api/v1/invocations/{pending[0]}"
    )
    out = sys.stdout
    out.write(
        "\nchroma-sync-gateway demo is serving on "
        f"{base} (Chroma Sync stand-in at {cfg.upstream.base_url})\n\n"
        f"Demo team key (team 'demo'): {key}\n\n"
        "Cancel a pending invocation through the gateway (answers 202; again, 412):\n\n"
        f"  {curl}\n\n"
        f"Other pending invocations: {', '.join(pending[1:])}\n"
        f"Audit log: {audit_path}\n"
        # The interpreter running the demo, so the hint works whether or not .venv/bin is on PATH.
        f"  verify it with: {shlex.quote(sys.executable)} -m gateway audit verify "
        f"{shlex.quote(audit_path)}\n"
        f"Metrics: {base}/metrics   Readiness: {base}/readyz\n\n"
        "Press Ctrl-C to stop (the temporary files are removed).\n\n"
    )
    out.flush()
