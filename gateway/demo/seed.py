"""The invocations a stand-in is seeded with, for the demo and `chroma-sync-gateway standin`:
pending and finished jobs across two databases, four collections and four sources, as a real
account might hold them. With a random generator the ids are reproducible (`--seed`)."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

from gateway.demo.standin import StandIn

DOCS_SOURCE = "0b8e1d2c-3a4f-4b5c-8d6e-7f8091a2b3c4"  # docs/handbook, from GitHub
API_SOURCE = "1c9f2e3d-4b5a-4c6d-9e7f-8091a2b3c4d5"  # docs/api-reference, a web scrape
WEB_SOURCE = "2d0a3f4e-5c6b-4d7e-8f90-a1b2c3d4e5f6"  # search/web, a web scrape
IMAGES_SOURCE = "3e1b4a5f-6d7c-4e8f-9a01-b2c3d4e5f6a7"  # search/images, from S3
SOURCES = {"docs/handbook": DOCS_SOURCE, "docs/api-reference": API_SOURCE,
           "search/web": WEB_SOURCE, "search/images": IMAGES_SOURCE}


@dataclass(frozen=True)
class Seeded:
    docs_pending: list[str]
    search_pending: list[str]


def seed(standin: StandIn, rng: random.Random | None = None) -> Seeded:
    """Pending and finished invocations across two databases, four collections and sources;
    ids drawn from `rng` when given (the same seed gives the same ids), else random."""
    def add(count: int, database: str, collection: str, source: str, kind: str,
            state: str = "pending") -> list[str]:
        return [standin.add_invocation(
            str(uuid.UUID(int=rng.getrandbits(128), version=4)) if rng else None,
            state=state, database=database, collection=collection, source_id=source,
            kind=kind) for _ in range(count)]

    docs = add(3, "docs", "handbook", DOCS_SOURCE, "github")
    add(1, "docs", "handbook", DOCS_SOURCE, "github", state="processing")
    add(1, "docs", "handbook", DOCS_SOURCE, "github", state="complete")
    docs += add(2, "docs", "api-reference", API_SOURCE, "web_scrape")
    search = add(3, "search", "web", WEB_SOURCE, "web_scrape")
    search += add(2, "search", "images", IMAGES_SOURCE, "s3")
    add(1, "search", "images", IMAGES_SOURCE, "s3", state="failed")
    return Seeded(docs, search)
