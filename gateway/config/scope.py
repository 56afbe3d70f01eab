"""What a team may cancel: its `scope` as written in the config, parsed once into a frozen
value, and matched against a job's context.

    "database:NAME"        jobs whose metadata.database_name is NAME
    "collection:DB/NAME"   database DB and metadata.collection_name NAME
    "source:UUID"          jobs whose source_id is UUID
    "*"                    alone: anything the gateway's token reaches

The check that refuses a cancel is `gateway.access.scopes.ScopeAuthorizer`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.jobs import JobContext

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
KINDS = 'database:NAME, collection:DB/NAME, source:UUID, or "*" alone'


class ScopeProblem(ValueError):
    """A scope entry that can't be parsed; `index` is the entry's place, None for the list."""

    def __init__(self, problem: str, index: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.index = index


@dataclass(frozen=True)
class Scope:
    unrestricted: bool = False
    databases: frozenset[str] = frozenset()
    collections: frozenset[tuple[str, str]] = frozenset()
    sources: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Sequence[object]) -> Scope:
        if not entries:
            raise ScopeProblem("must be a non-empty array")
        if "*" in entries:
            if len(entries) != 1:
                raise ScopeProblem('"*" must stand alone')
            return cls(unrestricted=True)
        databases: set[str] = set()
        collections: set[tuple[str, str]] = set()
        sources: set[str] = set()
        for index, entry in enumerate(entries):
            if not isinstance(entry, str):
                raise ScopeProblem(f"must be a string ({KINDS})", index)
            kind, sep, rest = entry.partition(":")
            if not sep or not rest:
                raise ScopeProblem(f"has an unknown kind ({KINDS})", index)
            if kind == "database":
                databases.add(rest)
            elif kind == "collection":
                database, slash, collection = rest.partition("/")
                if not slash or not database or not collection:
                    raise ScopeProblem("must be collection:DB/NAME", index)
                collections.add((database, collection))
            elif kind == "source":
                if not _UUID.fullmatch(rest):
                    raise ScopeProblem("must be source: and a UUID", index)
                sources.add(rest.lower())
            else:
                raise ScopeProblem(f"has an unknown kind ({KINDS})", index)
        return cls(False, frozenset(databases), frozenset(collections), frozenset(sources))

    def allows(self, job: JobContext) -> bool:
        return (
            self.unrestricted
            or job.database in self.databases
            or (job.database, job.collection) in self.collections
            or (job.source_id is not None and job.source_id in self.sources)
        )

    def entries(self) -> list[str]:
        """The scope as written in the config, in a stable order (for `check-config`)."""
        if self.unrestricted:
            return ["*"]
        return (
            [f"database:{d}" for d in sorted(self.databases)]
            + [f"collection:{d}/{c}" for d, c in sorted(self.collections)]
            + [f"source:{s}" for s in sorted(self.sources)]
        )


UNRESTRICTED = Scope(unrestricted=True)
