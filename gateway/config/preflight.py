"""`check-config --strict`: what would make the gateway fail closed at start, found before.

Plain `check-config` judges the file's text. The strict check also looks at what the file
points to, as the gateway will see it: the upstream token, the HMAC key, the audit folder and
the CA bundle. Each problem is one line naming the key; unrestricted teams are warnings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from gateway.config.model import Config
from gateway.secrets.sources import MIN_HMAC_KEY_CHARS, FileSecret, upstream_token_source


@dataclass(frozen=True)
class Findings:
    problems: tuple[str, ...]  # each fails the check (exit 2)
    warnings: tuple[str, ...]


def strict_findings(cfg: Config) -> Findings:
    problems: list[str] = []
    warnings: list[str] = []
    up, audit = cfg.upstream, cfg.audit
    where = cfg.source

    token = upstream_token_source(up.token_file, up.token_env)
    token.refresh()
    key = "upstream.token_file" if up.token_file else "upstream.token_env"
    if token.value is None:
        problems.append(f"{where}: {key}: {token.problem}")

    if audit.hmac_key_file:
        mac_key = FileSecret(audit.hmac_key_file, what="audit HMAC key",
                             min_chars=MIN_HMAC_KEY_CHARS)
        mac_key.refresh()
        if mac_key.value is None:
            problems.append(f"{where}: audit.hmac_key_file: {mac_key.problem}")
        elif token.value is not None and token.value in mac_key.value:
            # Whoever reads the audit key would hold the Chroma token too.
            problems.append(f"{where}: audit.hmac_key_file holds the upstream token")

    folder = os.path.dirname(os.path.abspath(audit.path))
    if not os.path.isdir(folder):
        problems.append(f"{where}: audit.path: its folder does not exist")
    elif not os.access(folder, os.W_OK | os.X_OK):
        problems.append(f"{where}: audit.path: its folder is not writable")
    elif os.path.isdir(audit.path):
        problems.append(f"{where}: audit.path is a folder, not a file")
    elif os.path.exists(audit.path) and not os.access(audit.path, os.W_OK):
        problems.append(f"{where}: audit.path is not writable")

    if up.ca_file and not (os.path.isfile(up.ca_file) and os.access(up.ca_file, os.R_OK)):
        problems.append(f"{where}: upstream.ca_file can't be read")

    for index, team in enumerate(cfg.teams):
        if team.scope.unrestricted:
            warnings.append(
                f"{where}: teams[{index}].scope: team {team.name!r} is unrestricted "
                '(["*"]): it may cancel anything the upstream token reaches'
            )
    return Findings(tuple(problems), tuple(warnings))
