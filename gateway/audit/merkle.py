"""The Merkle tree over a chain's record lines: RFC 9162 (Certificate Transparency v2) section 2.1.

Hashing is SHA-256 with domain separation, so a leaf can never pass for a node:

- leaf hash ``SHA-256(0x00 || line)``, ``line`` being the record's line without its newline;
- node hash ``SHA-256(0x01 || left || right)``;
- the root of an empty tree is ``SHA-256("")``.

The tree over ``n`` leaves splits at ``k``, the largest power of two below ``n``: the left
subtree holds leaves ``0 .. k-1`` (a perfect tree), the right one the rest. Two consequences
make everything here cheap:

- `Tree`, the writer's incremental tree, only keeps the roots of the perfect subtrees that
  make up its leaves so far (one per set bit of the size: at most 64 hashes), so an append
  costs one leaf hash plus, amortized, one node hash, and its state is small enough to save
  and resume at start without re-reading the chain;
- proofs are computed from the leaf hashes alone (`inclusion_proof`, `consistency_proof`) and
  checked with nothing but the root (`verify_inclusion`, `verify_consistency`), exactly as in
  RFC 9162 sections 2.1.3 and 2.1.4 (the same algorithms as Go's golang.org/x/mod/sumdb/tlog
  and transparency-dev/merkle).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""The root of the tree with no leaves."""

_ABSENT = bytes(HASH_SIZE)
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_MAX_STATE_HASHES = 64


class ProofError(ValueError):
    """A proof does not prove what it claims, or its sizes are impossible."""


def leaf_hash(line: bytes) -> bytes:
    """The leaf hash of one record line (without its trailing newline)."""
    return hashlib.sha256(_LEAF_PREFIX + line).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below `n` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class Tree:
    """An append-only Merkle tree that keeps only what it needs to go on: O(log n) hashes.

    `_peaks` holds the roots of the perfect subtrees covering leaves ``0 .. size-1``, left to
    right, largest first: one per set bit of `size`, from the highest bit down.
    """

    __slots__ = ("_peaks", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._peaks: list[bytes] = []

    @property
    def size(self) -> int:
        return self._size

    def append(self, line: bytes) -> bytes:
        """Add the leaf for `line`; return its leaf hash."""
        leaf = leaf_hash(line)
        self.append_hash(leaf)
        return leaf

    def append_hash(self, leaf: bytes) -> None:
        """Add a leaf by its hash: merge equal-sized peaks, as a binary counter carries."""
        peaks = self._peaks
        node = leaf
        size = self._size
        while size & 1:
            node = node_hash(peaks.pop(), node)
            size >>= 1
        peaks.append(node)
        self._size += 1

    def extend_hashes(self, leaves: Iterable[bytes]) -> None:
        """`append_hash` for each leaf, in one loop (a verifier adds a million)."""
        # Imported here: the gateway's writer appends one leaf at a time and never loads it.
        from gateway.audit import compiled

        speedups = compiled.speedups
        if speedups is not None and type(leaves) is list:
            self._size = speedups.extend_peaks(self._peaks, self._size, leaves)
            return
        peaks, sha256, prefix = self._peaks, hashlib.sha256, _NODE_PREFIX
        size = self._size
        for node in leaves:
            carry = size
            while carry & 1:
                node = sha256(prefix + peaks.pop() + node).digest()
                carry >>= 1
            peaks.append(node)
            size += 1
        self._size = size

    def root(self) -> bytes:
        """The root of the tree of every leaf appended so far."""
        peaks = self._peaks
        if not peaks:
            return EMPTY_ROOT
        node = peaks[-1]
        for peak in reversed(peaks[:-1]):
            node = node_hash(peak, node)
        return node

    def state(self) -> dict[str, object]:
        """What `from_state` needs to resume the tree: the size and the peaks (hex)."""
        return {"tree_size": self._size, "peaks": [p.hex() for p in self._peaks]}

    @classmethod
    def from_state(cls, state: object) -> Tree:
        """The tree `state()` described. Raises ValueError on anything inconsistent."""
        if not isinstance(state, dict):
            raise ValueError("Merkle state: not an object")
        size = state.get("tree_size")
        peaks = state.get("peaks")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 2**63:
            raise ValueError("Merkle state: tree_size is not an integer from 0 to 2^63-1")
        if not isinstance(peaks, list) or len(peaks) != bin(size).count("1"):
            raise ValueError("Merkle state: peaks do not match tree_size")
        tree = cls()
        for peak in peaks:
            if not isinstance(peak, str) or len(peak) != 2 * HASH_SIZE:
                raise ValueError("Merkle state: a peak is not 64 hex digits")
            try:
                tree._peaks.append(bytes.fromhex(peak))
            except ValueError:
                raise ValueError("Merkle state: a peak is not 64 hex digits") from None
        tree._size = size
        return tree

    def snapshot(self) -> tuple[int, tuple[bytes, ...]]:
        """The tree as it is now, cheaply (for `rewind`)."""
        return self._size, tuple(self._peaks)

    def rewind(self, snapshot: tuple[int, tuple[bytes, ...]]) -> None:
        """Back to a `snapshot` of this tree: leaves appended since are forgotten."""
        self._size, self._peaks = snapshot[0], list(snapshot[1])

    def copy(self) -> Tree:
        other = Tree()
        other._size = self._size
        other._peaks = list(self._peaks)
        return other


def root_of(leaves: Iterable[bytes]) -> bytes:
    """The root of the tree over these leaf hashes, in one pass."""
    tree = Tree()
    for leaf in leaves:
        tree.append_hash(leaf)
    return tree.root()


_CHUNK = 1 << 14  # leaves hashed level by level at a time: bounded memory, few Python calls


def _leaf_list(leaves: Sequence[bytes], start: int, end: int) -> list[bytes]:
    if isinstance(leaves, LeafHashes):
        return leaves.slice(start, end)
    return [leaves[i] for i in range(start, end)]


def _perfect(leaves: Sequence[bytes], start: int, n: int) -> bytes:
    """MTH of the perfect subtree of `n` (a power of two) leaves from `start`."""
    if n > _CHUNK:
        level = [_perfect(leaves, s, _CHUNK) for s in range(start, start + n, _CHUNK)]
    else:
        level = _leaf_list(leaves, start, start + n)
    sha256 = hashlib.sha256
    while len(level) > 1:
        level = [
            sha256(_NODE_PREFIX + level[i] + level[i + 1]).digest()
            for i in range(0, len(level), 2)
        ]
    return level[0]


def _subtree(leaves: Sequence[bytes], start: int, end: int) -> bytes:
    """MTH of ``leaves[start:end]`` (end > start): its perfect parts, folded right to left."""
    peaks: list[bytes] = []
    while start < end:
        n = 1 << ((end - start).bit_length() - 1)
        peaks.append(_perfect(leaves, start, n))
        start += n
    node = peaks[-1]
    for peak in reversed(peaks[:-1]):
        node = node_hash(peak, node)
    return node


def subtree_root(leaves: Sequence[bytes], size: int) -> bytes:
    """The root of the tree over the first `size` leaf hashes."""
    _check_size(size, len(leaves))
    return EMPTY_ROOT if size == 0 else _subtree(leaves, 0, size)


def _check_size(size: int, available: int) -> None:
    if size < 0 or size > available:
        raise ProofError(f"tree size {size} is beyond the {available} leaves available")


def inclusion_proof(leaves: Sequence[bytes], index: int, size: int) -> list[bytes]:
    """RFC 9162 2.1.3.1 PATH(index, D[0:size]): the sibling hashes from the leaf up.

    Costs one hash per leaf of the tree (every sibling subtree is hashed once).
    """
    _check_size(size, len(leaves))
    return inclusion_path(index, size, lambda start, end: _subtree(leaves, start, end))


def consistency_proof(leaves: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """RFC 9162 2.1.4.1 PROOF(old_size, D[0:new_size]): what shows the old tree is a prefix."""
    _check_size(new_size, len(leaves))
    return consistency_path(old_size, new_size,
                            lambda start, end: _subtree(leaves, start, end))


SubtreeRoot = Callable[[int, int], bytes]
"""MTH(D[start:end]) of the tree's leaves, for ``0 <= start < end <= size``."""


def inclusion_path(index: int, size: int, subtree: SubtreeRoot) -> list[bytes]:
    """PATH(index, D[0:size]) from whatever gives subtree roots: hashing the leaves, or a proof
    index that stores them (`gateway.audit.proof_index`)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index - start < k:
            path.append(subtree(start + k, end))
            end = start + k
        else:
            path.append(subtree(start, start + k))
            start += k
    path.reverse()
    return path


def consistency_path(old_size: int, new_size: int, subtree: SubtreeRoot) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) from whatever gives subtree roots (see `inclusion_path`)."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"old tree size {old_size} is not from 0 to {new_size}")
    if old_size in (0, new_size):
        return []
    path: list[bytes] = []
    start, end, m = 0, new_size, old_size
    whole = True  # SUBPROOF's b: the old tree is exactly this subtree's left edge
    while m != end:
        k = _split(end - start)
        if m - start <= k:
            path.append(subtree(start + k, end))
            end = start + k
        else:
            path.append(subtree(start, start + k))
            start += k
            whole = False
    if not whole:
        path.append(subtree(start, end))
    path.reverse()
    return path


def perfect_parts(start: int, end: int) -> list[tuple[int, int]]:
    """The perfect subtrees whose roots, folded right to left (`fold`), make MTH(D[start:end])
    of a subtree of the RFC 9162 split: (level, index at that level) each, largest first."""
    parts: list[tuple[int, int]] = []
    while start < end:
        level = (end - start).bit_length() - 1
        parts.append((level, start >> level))
        start += 1 << level
    return parts


def fold(peaks: Sequence[bytes]) -> bytes:
    """The root over perfect subtree roots, left to right, largest first."""
    node = peaks[-1]
    for peak in reversed(peaks[:-1]):
        node = node_hash(peak, node)
    return node


def _lsb(n: int) -> int:
    return n & 1


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 2.1.3.2: the root that `proof` leads to from `leaf` at `index` of `size`."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    if len(leaf) != HASH_SIZE or any(len(p) != HASH_SIZE for p in proof):
        raise ProofError("a hash is not 32 bytes")
    fn, sn, node = index, size - 1, leaf
    for sibling in proof:
        if sn == 0:
            raise ProofError("the proof is longer than the path to the root")
        if _lsb(fn) or fn == sn:
            node = node_hash(sibling, node)
            while not _lsb(fn) and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            node = node_hash(node, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the proof is shorter than the path to the root")
    return node


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ProofError unless `proof` shows `leaf` at `index` in the tree `size`/`root`."""
    if root_from_inclusion(index, size, leaf, proof) != root:
        raise ProofError("the inclusion proof leads to another root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 2.1.4.2: raise ProofError unless the old tree is a prefix of the new one."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"old tree size {old_size} is above new tree size {new_size}")
    if any(len(p) != HASH_SIZE for p in proof):
        raise ProofError("a hash is not 32 bytes")
    if old_size == new_size:
        if proof:
            raise ProofError("trees of the same size need an empty proof")
        if old_root != new_root:
            raise ProofError("two trees of the same size with different roots")
        return
    if old_size == 0:
        if proof:
            raise ProofError("the empty tree needs an empty proof")
        return
    if not proof:
        raise ProofError("the consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is a node of the path
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while _lsb(fn):
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is longer than needed")
        if _lsb(fn) or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not _lsb(fn) and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the consistency proof is shorter than needed")
    if fr != old_root:
        raise ProofError("the consistency proof does not lead to the old root")
    if sr != new_root:
        raise ProofError("the consistency proof does not lead to the new root")


class LeafHashes(Sequence[bytes]):
    """Leaf hashes packed in one buffer (32 bytes each): a million take 32 MB, not 100.

    `put` places a leaf at any index (records may arrive in any order); an index not put yet
    reads as 32 zero bytes, which no SHA-256 output is in practice (`has` tells them apart).
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @classmethod
    def from_packed(cls, packed: bytes | bytearray) -> LeafHashes:
        """Leaves `packed` holds (32 bytes each, zeros where none is known yet)."""
        if len(packed) % HASH_SIZE:
            raise ValueError("packed leaf hashes: not a whole number of hashes")
        leaves = cls()
        leaves._buf = bytearray(packed)
        return leaves

    def packed(self) -> memoryview:
        """The leaves as one buffer (a view: valid until the next `put` or `append`)."""
        return memoryview(self._buf)

    def append(self, leaf: bytes) -> None:
        self._buf += leaf

    def put(self, index: int, leaf: bytes) -> bytes | None:
        """Place `leaf` at `index`; return the leaf already there (None if none)."""
        offset = index * HASH_SIZE
        if offset >= len(self._buf):
            self._buf.extend(bytes(offset + HASH_SIZE - len(self._buf)))
            before = None
        else:
            before = bytes(self._buf[offset : offset + HASH_SIZE])
            if before == _ABSENT:
                before = None
        if before is None:
            self._buf[offset : offset + HASH_SIZE] = leaf
        return before

    def has(self, index: int) -> bool:
        return 0 <= index < len(self) and self[index] != _ABSENT

    def __len__(self) -> int:
        return len(self._buf) // HASH_SIZE

    def __getitem__(self, index: int) -> bytes:  # type: ignore[override]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        offset = index * HASH_SIZE
        return bytes(self._buf[offset : offset + HASH_SIZE])

    def slice(self, start: int, end: int) -> list[bytes]:
        """Leaves `start .. end-1` as a list, in one pass over the buffer."""
        with memoryview(self._buf) as whole:
            view = whole[start * HASH_SIZE : end * HASH_SIZE]
            out = [bytes(view[i : i + HASH_SIZE]) for i in range(0, len(view), HASH_SIZE)]
            view.release()
        return out

    def first_missing(self, size: int) -> int | None:
        """The first index below `size` with no leaf, or None when all are there."""
        known = min(size, len(self))
        end = known * HASH_SIZE
        pos = self._buf.find(_ABSENT, 0, end)
        while pos != -1 and pos % HASH_SIZE:  # only a whole, aligned slot is a missing leaf
            pos = self._buf.find(_ABSENT, pos + 1, end)
        if pos != -1:
            return pos // HASH_SIZE
        return None if known == size else known
