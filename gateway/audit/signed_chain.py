"""The writer's side of chains, the Merkle tree and signed checkpoints (spec 0.3).

The writer (group commit, files) stays in charge of sealing and writing; it asks this keeper:

- at open, `plan` what the existing log means: a chain to continue (its tree resumed from the
  saved state), or a new chain to begin, in a fresh file, naming the old one in `previous` (a
  log of an earlier version, or a chain whose tree can't be resumed);
- for each record, `stamp` the body (`chain`; a checkpoint's `tree_size`, `root`, `note`) and
  `add` its line to the tree; `snapshot`/`restore` around a write that may fail;
- after a batch with a checkpoint is written, `committed` saves the tree's state and the
  newest note to `audit.checkpoint_file`.

The signing key (`audit.signing_key_file`) is watched like the HMAC key: while it is
configured but unusable, `signing_problem` says why, and the writer fails closed.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from gateway.audit import tree_state
from gateway.audit.chain_tree import ChainTree, default_origin, new_chain_id
from gateway.audit.files import rotated_files
from gateway.config.model import AuditConfig
from gateway.secrets.sources import SecretSource

if TYPE_CHECKING:  # cryptography is loaded only when a signing key is configured
    from gateway.audit.note import Signer
    from gateway.audit.signing import SigningKeySource

log = structlog.get_logger("gateway.audit")

Snapshot = tuple[ChainTree, tuple[int, tuple[bytes, ...]]] | None

CHAIN_EVENT = "audit.chain"
OPENED_EVENT = "audit.opened"
CHECKPOINT_EVENT = "audit.checkpoint"


@dataclass(frozen=True)
class Plan:
    """What to do with the log found at open."""

    new_chain: bool
    previous: dict[str, Any] | None = None
    """For a new chain after an old one: the old chain's last record."""
    reason: str = ""


class ChainKeeper:
    def __init__(
        self,
        path: str,
        *,
        version: str,
        origin: str | None = None,
        instance: str | None = None,
        signing_key: SigningKeySource | None = None,
        token: SecretSource | None = None,
        checkpoint_file: str | None = None,
        durable: bool = False,
    ) -> None:
        self.path = path
        self.version = version
        self._origin = origin
        self.instance = instance or socket.gethostname()
        self._signing_key = signing_key
        self._token = token  # the signing key must never be (or hold) it
        self._checkpoint_file = checkpoint_file
        self._durable = durable
        self.tree: ChainTree | None = None
        self._announced: str | None = None  # the public key the last audit.opened named
        self._encoded: tuple[Signer, str] | None = None  # a signer's verifier key, derived once
        self.last_note: str | None = None

    @classmethod
    def for_config(
        cls, config: AuditConfig, version: str, signing_key: SigningKeySource | None,
        token: SecretSource | None,
    ) -> ChainKeeper:
        return cls(config.path, version=version, origin=config.origin, instance=config.instance,
                   signing_key=signing_key, token=token, checkpoint_file=config.checkpoint_file,
                   durable=config.fsync)

    # -- the key ------------------------------------------------------------------------------

    @property
    def signing_configured(self) -> bool:
        return self._signing_key is not None

    def signer(self) -> Signer | None:
        """The key to sign with now; None when unconfigured or unusable."""
        source = self._signing_key
        if source is None or source.signer is None or source.value is None:
            return None
        token = self._token.value if self._token is not None else None
        if token and token in source.value:
            return None
        return source.signer

    def signing_problem(self) -> str | None:
        """Why a configured key can't be used (the writer then fails closed), or None."""
        source = self._signing_key
        if source is None or self.signer() is not None:
            return None
        if source.value is not None:
            return "the audit signing key file holds the upstream token; it is not used"
        return source.problem or "no signing key"

    def public_key(self) -> str | None:
        signer = self.signer()
        if signer is None:
            return None
        if self._encoded is None or self._encoded[0] is not signer:
            self._encoded = (signer, signer.verifier.encoded)
        return self._encoded[1]

    # -- open ---------------------------------------------------------------------------------

    @property
    def chain(self) -> str:
        assert self.tree is not None, "open the chain first"
        return self.tree.chain

    def plan(self, files: Sequence[str], last: dict[str, Any] | None) -> Plan:
        """Read what the log's files hold; resume the tree, or say a new chain must begin.

        `files`: the log's files oldest first (rotated, then live); `last`: its last record
        (None for an empty log).
        """
        if last is None:
            return Plan(new_chain=True)
        previous = {"chain": last.get("chain"), "seq": last["seq"], "hash": last["hash"]}
        chain = last.get("chain")
        if not isinstance(chain, str):
            return Plan(True, previous, "a log of an earlier version (records without chain)")
        saved = tree_state.load(self.path)
        resumed = None
        if saved is not None and saved.tree.chain == chain:
            resumed = tree_state.catch_up(saved, files, last["seq"])
        if resumed is None:
            origin = saved.tree.origin if saved is not None and saved.tree.chain == chain else (
                self._origin_from_files(files, chain))
            if origin is not None:
                log.warning("audit.tree_rebuilding", chain=chain,
                            reason="no saved tree state matches the log")
                resumed = tree_state.rebuild(files, chain, origin)
        if resumed is None or resumed.tree.size != last["seq"]:
            return Plan(True, previous, "the chain's Merkle tree can't be resumed (no saved "
                        "state, and its first records are gone)")
        self.tree = resumed
        return Plan(new_chain=False)

    def _origin_from_files(self, files: Sequence[str], chain: str) -> str | None:
        """The origin in the chain's `audit.chain` record (its first line)."""
        for path in files:
            try:
                with open(path, "rb") as handle:
                    record = json.loads(handle.readline(1 << 20))
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and record.get("chain") == chain:
                origin = record.get("origin")
                return origin if isinstance(origin, str) else None
        return None

    def begin(self, previous: dict[str, Any] | None, ts: str) -> dict[str, Any]:
        """Start a new chain; the body of its first record, `audit.chain`."""
        chain = new_chain_id()
        self.tree = ChainTree(chain, self._origin or default_origin(chain))
        return {
            "ts": ts, "event": CHAIN_EVENT, "instance": self.instance,
            "origin": self.tree.origin, "version": self.version,
            "public_key": self.public_key(), "previous": previous,
        }

    def opened(self, ts: str) -> dict[str, Any]:
        """An `audit.opened` body: at each start, and when the signing key changes."""
        self._announced = self.public_key()
        return {"ts": ts, "event": OPENED_EVENT, "instance": self.instance,
                "version": self.version, "public_key": self._announced}

    def key_changed(self) -> bool:
        """Whether the usable key differs from the one the last `audit.opened` named."""
        return self.tree is not None and self.public_key() != self._announced

    # -- records ------------------------------------------------------------------------------

    def stamp(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body` with its chain fields, ready to seal as the next record."""
        assert self.tree is not None
        if body.get("event") == CHECKPOINT_EVENT:
            return {**body, **self.tree.checkpoint_fields(self.signer())}
        return {**body, "chain": self.tree.chain}

    def add(self, line: bytes) -> None:
        assert self.tree is not None
        self.tree.add(line)

    def snapshot(self) -> Snapshot:
        """Before sealing a batch that may not reach the file (cheap: a tuple)."""
        if self.tree is None:
            return None
        return self.tree, self.tree.tree.snapshot()

    def restore(self, snapshot: Snapshot) -> None:
        if snapshot is None:
            self.tree = None
            return
        self.tree, tree_snapshot = snapshot
        self.tree.tree.rewind(tree_snapshot)

    def committed(self, sealed: Sequence[dict[str, Any]], seq: int, head: str) -> None:
        """After a batch is written: keep the newest note and, past a checkpoint, the state."""
        checkpoints = [r for r in sealed if r["event"] == CHECKPOINT_EVENT]
        if not checkpoints:
            return
        notes = [r["note"] for r in checkpoints if "note" in r]
        if notes:
            self.last_note = notes[-1]
            if self._checkpoint_file:
                try:
                    tree_state.write_atomically(self._checkpoint_file, notes[-1],
                                                durable=self._durable)
                except OSError as exc:
                    log.error("audit.checkpoint_file_failed", problem=exc.strerror)
        self.save(seq, head)

    def save(self, seq: int, head: str) -> None:
        if self.tree is None or self.tree.tree.size != seq:
            return
        try:
            tree_state.save(self.path, self.tree, seq, head, durable=self._durable)
        except OSError as exc:  # resumable anyway: the tree is rebuilt from the files
            log.warning("audit.tree_state_failed", problem=exc.strerror)


def last_record(files: Sequence[str]) -> dict[str, Any] | None:
    """The last record of the newest file that has one (its torn tail is already cut)."""
    for path in reversed(files):
        try:
            for line in tree_state.lines_backward(path):
                record = json.loads(line)
                return record if isinstance(record, dict) and "seq" in record else None
        except (OSError, ValueError):
            return None
    return None


def plan_open(keeper: ChainKeeper, path: str, head_seq: int) -> Plan | None:
    """At open, after recovery: what the log found means (None: a reopen while running, the
    chain goes on with its tree in memory)."""
    if keeper.tree is not None and keeper.tree.tree.size == head_seq:
        return None
    files = [*rotated_files(path), path]
    plan = keeper.plan(files, last_record(files))
    if plan.previous is not None:
        log.warning("audit.chain_closed", reason=plan.reason, previous=plan.previous)
    return plan
