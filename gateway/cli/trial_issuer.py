"""`chroma-sync-gateway keys jwks`: a throwaway issuer for trying workload identity locally.

It makes a new ES256 key, writes its public JWKS (`jwks.json`, what a cluster serves at
/openid/v1/jwks) and one service-account token signed with it (`token`, mode 0600) into a
folder, prints the `[[issuers]]` entry and the team line that accept the token, and forgets
the private key. For trying only: in a cluster the JWKS is the cluster's own and the token is a
projected service-account token.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TextIO

EXIT_OK, EXIT_USAGE = 0, 2
SUBJECT_PREFIX = "system:serviceaccount:"


def run(*, folder: str, service_account: str, issuer: str, audience: str, hours: float,
        out: TextIO, err: TextIO) -> int:
    namespace, slash, name = service_account.partition("/")
    if not slash or not namespace or not name or "/" in name:
        print("keys jwks: --service-account must be NAMESPACE/NAME, got "
              + ascii(service_account[:80]), file=err)
        return EXIT_USAGE
    if not 0 < hours <= 24 * 7:
        print(f"keys jwks: --hours must be more than 0 and at most 168, got {hours:g}",
              file=err)
        return EXIT_USAGE
    target = Path(folder)
    jwks_path, token_path = target / "jwks.json", target / "token"
    for path in (jwks_path, token_path):
        if path.exists():
            print(f"keys jwks: {path} exists; choose an empty folder", file=err)
            return EXIT_USAGE
    # Imported here: the JWT stack is heavy and only this verb and [[issuers]] need it.
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    private = ec.generate_private_key(ec.SECP256R1())
    kid = f"trial-{int(time.time())}"
    jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    jwk.update({"kid": kid, "use": "sig", "alg": "ES256"})
    now = int(time.time())
    token = jwt.encode(
        {"iss": issuer, "aud": [audience], "sub": f"{SUBJECT_PREFIX}{namespace}:{name}",
         "iat": now, "nbf": now, "exp": now + int(hours * 3600)},
        private, algorithm="ES256", headers={"kid": kid})
    target.mkdir(parents=True, exist_ok=True)
    jwks_path.write_text(json.dumps({"keys": [jwk]}, indent=2) + "\n")
    descriptor = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token + "\n")
    out.write(
        f"wrote {jwks_path} (public keys) and {token_path} (a token for {service_account}, "
        f"valid {hours:g} h)\n\nAdd to the config:\n\n"
        f'[[issuers]]\nname = "trial"\nissuer = "{issuer}"\naudience = "{audience}"\n'
        f'jwks_file = "{jwks_path}"\n\n'
        f'and to a team: service_accounts = ["{service_account}"]\n\n'
        f'Then call with: -H "Authorization: Bearer $(cat {token_path})"\n')
    return EXIT_OK
