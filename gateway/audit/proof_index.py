"""The proof index file: what `audit prove --index` keeps of one chain, so that a proof reads
O(log n) hashes and one record line instead of the whole chain.

It holds every level of the chain's Merkle tree (the roots of its perfect subtrees: level 0 the
leaf hashes, level L the roots of the subtrees of 2^L leaves; from these any RFC 9162 subtree
root is at most log n hashes away, as with the tiles of Go's sumdb/tlog), where each record's
line is in its file, where the chain's signed checkpoints are, and what identifies the files
it was made from (`gateway.audit.index_sources`). It is a cache, never a source of trust: what a
proof takes from it is checked against the files and the signed checkpoint before it is printed
(`gateway.audit.prove_indexed`).

Layout (integers little-endian)::

    MAGIC (16 bytes) | u32 header length | SHA-256 of the header (32 bytes) | header (JSON)
    sections, each where the header's "sections" says:
      "levels": [[offset, count], ...]  level 0 holds every leaf seen (32 zero bytes for a seq
                                        not seen); level L >= 1 covers the leaves from seq 1
                                        up to the first gap (`prefix`): prefix >> L nodes
      "where": [offset, count]          per leaf: u32 file id (NOWHERE: not seen), u64 offset
                                        of the record's first line (uncompressed)
      "checkpoints": [offset, count]    per checkpoint record with a signed note, by tree
                                        size, ties in reading order: u64 tree size, u32 file
                                        id, u64 offset
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from typing import Any

from gateway.audit import merkle
from gateway.audit.index_sources import SourceFile

MAGIC = b"csg-proof-index\x01"
FORMAT = 1
NOWHERE = 0xFFFFFFFF
WHERE = struct.Struct("<IQ")
CHECKPOINT = struct.Struct("<QIQ")
_PREAMBLE = struct.Struct("<16sI32s")
_MAX_HEADER = 64 * 1024 * 1024
_H = merkle.HASH_SIZE


class IndexDamaged(Exception):
    """The file is an index, but not a whole, consistent one (rebuild it)."""


class NotAnIndex(Exception):
    """The file is something else: never overwritten."""


class IndexContent:
    """A whole index in memory: what `write` stores and `ProofIndex.content` loads back."""

    def __init__(self, chain: str, origin: str | None, origin_from_chain: bool,
                 files: list[SourceFile], leaves: merkle.LeafHashes,
                 levels: list[bytearray] | None = None, where: bytearray | None = None,
                 checkpoints: list[tuple[int, int, int]] | None = None) -> None:
        self.chain = chain
        self.origin = origin
        # `origin` is the `audit.chain` record's (else the first signed checkpoint's).
        self.origin_from_chain = origin_from_chain
        self.files = files
        self.leaves = leaves
        self.levels = [] if levels is None else levels  # 1 and up, over leaves 0 .. prefix - 1
        self.where = bytearray() if where is None else where
        self.checkpoints = [] if checkpoints is None else checkpoints

    @property
    def prefix(self) -> int:
        missing = self.leaves.first_missing(len(self.leaves))
        return len(self.leaves) if missing is None else missing

    def extend_levels(self) -> None:
        """Hash the nodes the leaves up to `prefix` make that the levels lack yet."""
        prefix = self.prefix
        below: bytes | bytearray | memoryview = self.leaves.packed()
        level = 1
        sha256 = hashlib.sha256
        while prefix >> level:
            if len(self.levels) < level:
                self.levels.append(bytearray())
            nodes = self.levels[level - 1]
            have, want = len(nodes) // _H, prefix >> level
            with memoryview(below) as view:
                nodes += b"".join(
                    sha256(b"\x01" + view[2 * i * _H:(2 * i + 2) * _H]).digest()
                    for i in range(have, want))
            below = nodes
            level += 1
        del self.levels[level - 1:]


def _header(content: IndexContent, sections: dict[str, Any]) -> bytes:
    return json.dumps({
        "format": FORMAT, "chain": content.chain, "origin": content.origin,
        "origin_from_chain": content.origin_from_chain,
        "files": [f.to_json() for f in content.files], "leaves": len(content.leaves),
        "prefix": content.prefix, "sections": sections,
    }, separators=(",", ":")).encode()


def write(path: str, content: IndexContent) -> None:
    """Write the index to `path` atomically (a temporary file beside it, then renamed)."""
    blobs: list[bytes | bytearray | memoryview] = [
        content.leaves.packed(), *content.levels, content.where,
        b"".join(CHECKPOINT.pack(*c) for c in content.checkpoints)]
    counts = [len(content.leaves), *(len(x) // _H for x in content.levels),
              len(content.where) // WHERE.size, len(content.checkpoints)]
    # Offsets depend on the header's length, which holds them: settle them in two rounds.
    header, settled = b"", False
    while not settled:
        offset = _PREAMBLE.size + len(header)
        placed = []
        for blob, count in zip(blobs, counts, strict=True):
            offset += -offset % 8
            placed.append([offset, count])
            offset += len(blob)
        sections = {"levels": placed[:-2], "where": placed[-2], "checkpoints": placed[-1]}
        new = _header(content, sections)
        settled, header = len(new) == len(header), new
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "wb") as out:
            out.write(_PREAMBLE.pack(MAGIC, len(header), hashlib.sha256(header).digest()))
            out.write(header)
            for blob, (start, _) in zip(blobs, placed, strict=True):
                out.write(bytes(start - out.tell()))
                out.write(blob)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


class ProofIndex:
    """An index file, mapped read-only. Lookups that fall outside it raise IndexDamaged."""

    def __init__(self, path: str) -> None:
        """Raises FileNotFoundError, NotAnIndex, IndexDamaged or OSError."""
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                raise FileNotFoundError(path)  # nothing to lose: as good as absent
            start = handle.read(len(MAGIC))
            if not MAGIC.startswith(start):
                raise NotAnIndex(path)
            if size < _PREAMBLE.size:
                raise IndexDamaged("cut short")
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        _, length, digest = _PREAMBLE.unpack_from(self._map)
        end = _PREAMBLE.size + length
        if length > _MAX_HEADER or end > size:
            raise IndexDamaged("cut short")
        header = self._map[_PREAMBLE.size:end]
        if hashlib.sha256(header).digest() != digest:
            raise IndexDamaged("its header does not match its checksum")
        try:
            self._read_header(json.loads(header), size)
        except (ValueError, KeyError, TypeError):
            raise IndexDamaged("its header is not one this version writes") from None

    def _read_header(self, head: dict[str, Any], size: int) -> None:
        if head["format"] != FORMAT:
            raise ValueError("format")
        self.chain: str = head["chain"]
        self.origin: str | None = head["origin"]
        self.origin_from_chain: bool = head["origin_from_chain"]
        self.files = [SourceFile.from_json(f) for f in head["files"]]
        self.leaves: int = head["leaves"]
        self.prefix: int = head["prefix"]
        sections = head["sections"]
        self._levels = [self._section(s, _H, size) for s in sections["levels"]]
        self._where = self._section(sections["where"], WHERE.size, size)
        self._checkpoints = self._section(sections["checkpoints"], CHECKPOINT.size, size)
        expected = [self.leaves, *(self.prefix >> n for n in range(1, len(self._levels)))]
        if (not isinstance(self.chain, str) or not isinstance(self.origin, str | None)
                or type(self.origin_from_chain) is not bool or type(self.leaves) is not int
                or type(self.prefix) is not int or not 0 <= self.prefix <= self.leaves
                or [count for _, count in self._levels] != expected
                or self._where[1] != self.leaves or self.prefix >> len(self._levels)):
            raise ValueError("sizes")

    @staticmethod
    def _section(spot: list[int], item: int, size: int) -> tuple[int, int]:
        start, count = spot
        if type(start) is not int or type(count) is not int or start < 0 or count < 0:
            raise ValueError("section")
        if start + count * item > size:
            raise IndexDamaged("cut short")
        return start, count

    def close(self) -> None:
        self._map.close()

    def node(self, level: int, index: int) -> bytes:
        """The root of the perfect subtree of 2^level leaves from leaf ``index << level``."""
        if not 0 <= level < len(self._levels):
            raise IndexDamaged(f"no level {level}")
        start, count = self._levels[level]
        if not 0 <= index < count:
            raise IndexDamaged(f"no node {index} at level {level}")
        at = start + index * _H
        return self._map[at:at + _H]

    def subtree(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) of a subtree of the RFC 9162 split: at most log n nodes."""
        return merkle.fold([self.node(*part) for part in merkle.perfect_parts(start, end)])

    def root(self, size: int) -> bytes:
        return merkle.EMPTY_ROOT if size == 0 else self.subtree(0, size)

    def where(self, seq: int) -> tuple[SourceFile, int] | None:
        """The file and offset of the record with this seq; None when not seen."""
        start, count = self._where
        if not 1 <= seq <= count:
            return None
        file_id, offset = WHERE.unpack_from(self._map, start + (seq - 1) * WHERE.size)
        if file_id == NOWHERE:
            if seq <= self.prefix:
                raise IndexDamaged(f"seq {seq} below the first gap has no place")
            return None
        return self.file(file_id), offset

    def file(self, file_id: int) -> SourceFile:
        for known in self.files:
            if known.id == file_id:
                return known
        raise IndexDamaged(f"no file {file_id}")

    def checkpoints(self) -> list[tuple[int, int, int]]:
        """(tree size, file id, offset) of each signed checkpoint record, by tree size."""
        start, count = self._checkpoints
        view = self._map[start:start + count * CHECKPOINT.size]
        return list(CHECKPOINT.iter_unpack(view))

    def newest_checkpoint(self) -> tuple[int, int, int] | None:
        """The first, in reading order, of the checkpoints at the largest tree size."""
        start, count = self._checkpoints
        found = None
        for i in range(count - 1, -1, -1):
            entry = CHECKPOINT.unpack_from(self._map, start + i * CHECKPOINT.size)
            if found is not None and entry[0] != found[0]:
                break
            found = entry
        return found

    def content(self) -> IndexContent:
        """All of it, to extend (IndexDamaged if the sections do not fit together)."""
        start, count = self._levels[0]
        leaves = merkle.LeafHashes.from_packed(self._map[start:start + count * _H])
        levels = [bytearray(self._map[s:s + n * _H]) for s, n in self._levels[1:]]
        start, count = self._where
        where = bytearray(self._map[start:start + count * WHERE.size])
        content = IndexContent(self.chain, self.origin, self.origin_from_chain,
                               list(self.files), leaves, levels, where, self.checkpoints())
        if content.prefix != self.prefix:
            raise IndexDamaged("its leaves do not match its header")
        return content
