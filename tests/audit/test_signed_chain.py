"""The writer's chain keeper: what an existing log means at open, the key, the saved state."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.audit import chain as audit_chain
from gateway.audit import note, tree_state
from gateway.audit.chain_tree import ChainTree
from gateway.audit.signed_chain import ChainKeeper
from gateway.audit.signing import SigningKeySource
from gateway.secrets.sources import FileSecret
from tests.audit.signed_logs import ChainBuilder, cancel_body


def keeper(tmp_path: Path, **kwargs: object) -> ChainKeeper:
    return ChainKeeper(str(tmp_path / "audit.jsonl"), version="0.3.0", **kwargs)  # type: ignore[arg-type]


def key_file(tmp_path: Path, text: str, name: str = "signing.key") -> SigningKeySource:
    path = tmp_path / name
    path.write_text(text)
    source = SigningKeySource(str(path))
    source.refresh()
    return source


def test_an_empty_log_begins_a_chain_that_names_its_instance_origin_and_key(
    tmp_path: Path,
) -> None:
    signer = note.generate_key("audit.example/gw")
    k = keeper(tmp_path, instance="pod-7", signing_key=key_file(tmp_path, signer.encoded))
    plan = k.plan([], None)
    assert plan.new_chain and plan.previous is None
    body = k.begin(None, "2025-01-01T00:00:00.000Z")
    assert body["event"] == "audit.chain" and body["instance"] == "pod-7"
    assert body["origin"] == "chroma-sync-gateway/" + k.chain
    assert body["public_key"] == signer.verifier.encoded and body["previous"] is None
    assert k.opened("t")["public_key"] == signer.verifier.encoded
    assert not k.key_changed()


def test_a_log_of_an_earlier_version_is_followed_by_a_new_chain(tmp_path: Path) -> None:
    record, _ = audit_chain.seal(cancel_body(1), seq=1, prev=audit_chain.GENESIS, mac_key=None)
    plan = keeper(tmp_path).plan([], record)
    assert plan.new_chain
    assert plan.previous == {"chain": None, "seq": 1, "hash": record["hash"]}


def test_a_chain_resumes_from_its_saved_state(tmp_path: Path) -> None:
    builder = ChainBuilder(signer=None)
    builder.cancels(30)
    live = builder.write(tmp_path / "audit.jsonl")
    k = keeper(tmp_path)
    tree = builder.tree
    # The state as it was 10 records ago.
    partial = ChainTree(builder.chain, tree.origin)
    for line in builder.lines[:22]:
        partial.add(line)
    tree_state.save(str(live), partial, 22, builder.records[21]["hash"], durable=False)
    plan = k.plan([str(live)], builder.records[-1])
    assert not plan.new_chain
    assert k.chain == builder.chain and k.tree is not None
    assert k.tree.tree.root() == tree.tree.root()


def test_without_a_state_the_tree_is_rebuilt_or_a_new_chain_begins(tmp_path: Path) -> None:
    builder = ChainBuilder(signer=None, origin="audit.example/custom")
    builder.cancels(20)
    live = builder.write(tmp_path / "audit.jsonl")
    k = keeper(tmp_path)
    assert not k.plan([str(live)], builder.records[-1]).new_chain
    assert k.tree is not None and k.tree.origin == "audit.example/custom"
    assert k.tree.tree.root() == builder.tree.tree.root()
    # The first records are gone (retention), and no state: the tree can't be resumed.
    live.write_bytes(b"".join(builder.lines[10:]))
    plan = keeper(tmp_path).plan([str(live)], builder.records[-1])
    assert plan.new_chain
    assert plan.previous == {"chain": builder.chain, "seq": 22,
                             "hash": builder.records[-1]["hash"]}


def test_checkpoints_carry_the_tree_and_a_note_and_the_state_is_saved(tmp_path: Path) -> None:
    signer = note.generate_key("audit.example/gw")
    checkpoint_file = tmp_path / "checkpoint.note"
    k = keeper(tmp_path, signing_key=key_file(tmp_path, signer.encoded),
               checkpoint_file=str(checkpoint_file))
    k.plan([], None)
    seq, head = 0, audit_chain.GENESIS
    sealed = []
    for body in (k.begin(None, "t"), k.opened("t"), cancel_body(3),
                 {"ts": "t", "event": "audit.checkpoint"}):
        record, line = audit_chain.seal(k.stamp(body), seq=seq + 1, prev=head, mac_key=None)
        k.add(line)
        seq, head = record["seq"], record["hash"]
        sealed.append(record)
    checkpoint = sealed[-1]
    assert checkpoint["tree_size"] == 3 and len(checkpoint["root"]) == 64
    opened = note.open_note(checkpoint["note"], [signer.verifier])
    assert opened.text.startswith(f"chroma-sync-gateway/{k.chain}\n3\n")
    k.committed(sealed, seq, head)
    assert checkpoint_file.read_text() == checkpoint["note"] == k.last_note
    saved = tree_state.load(str(tmp_path / "audit.jsonl"))
    assert saved is not None and (saved.seq, saved.hash) == (4, head)


def test_a_key_that_is_missing_malformed_or_holds_the_token_is_a_problem(tmp_path: Path) -> None:
    signer = note.generate_key("audit.example/gw")
    missing = SigningKeySource(str(tmp_path / "nope"))
    missing.refresh()
    k = keeper(tmp_path, signing_key=missing)
    assert k.signer() is None and k.signing_problem()
    bad = key_file(tmp_path, "PRIVATE+KEY+garbage", "bad.key")
    problem = keeper(tmp_path, signing_key=bad).signing_problem()
    assert problem is not None and "PRIVATE+KEY+garbage" not in problem
    token_file = tmp_path / "token"
    # The key's last 20 characters: never empty (a split at '+' was, when the key's base64
    # ended in '+', and the test then failed one time in 64).
    token_file.write_text(signer.encoded[-20:])
    token = FileSecret(str(token_file), what="upstream token")
    token.refresh()
    holds = keeper(tmp_path, signing_key=key_file(tmp_path, signer.encoded, "k2"), token=token)
    assert holds.signer() is None and "holds the upstream token" in (holds.signing_problem() or "")
    assert keeper(tmp_path).signing_problem() is None  # not configured: nothing to fail on


def test_a_key_change_is_noticed_for_the_next_audit_opened(tmp_path: Path) -> None:
    first, second = note.generate_key("gw"), note.generate_key("gw")
    source = key_file(tmp_path, first.encoded)
    k = keeper(tmp_path, signing_key=source)
    k.plan([], None)
    k.begin(None, "t")
    k.opened("t")
    Path(source.path).write_text(second.encoded)
    source.refresh()
    assert k.key_changed()
    assert k.opened("t")["public_key"] == second.verifier.encoded
    assert not k.key_changed()
    assert json.dumps(k.opened("t")).count(second.encoded) == 0  # never the private key
