"""gateway.access.scopes: parsing scope entries and matching them against a job's context."""

from __future__ import annotations

import pytest

from gateway.access.scopes import ScopeAuthorizer
from gateway.config.scope import Scope, ScopeProblem
from gateway.errors import RequestRejected
from gateway.jobs import JobContext

SOURCE = "0b8e1d2c-3a4f-4b5c-8d6e-7f8091a2b3c4"


def test_entries_round_trip_in_a_stable_order() -> None:
    scope = Scope.parse(["source:" + SOURCE.upper(), "database:b", "collection:a/x",
                         "database:a"])
    assert scope.entries() == ["database:a", "database:b", "collection:a/x", f"source:{SOURCE}"]
    assert Scope.parse(["*"]).entries() == ["*"]


def test_collection_names_may_hold_slashes_after_the_database() -> None:
    assert Scope.parse(["collection:db/a/b"]).collections == {("db", "a/b")}


@pytest.mark.parametrize(("entries", "index"), [
    ([], None), (["*", "*"], None), (["database:a", "*"], None), (["x:y"], 0),
    (["database:a", "collection:nodb"], 1), (["source:123"], 0), ([None], 0),
])
def test_bad_entries_name_their_place(entries: list[object], index: int | None) -> None:
    with pytest.raises(ScopeProblem) as info:
        Scope.parse(entries)
    assert info.value.index == index


@pytest.mark.parametrize(("entries", "job", "allowed"), [
    (["*"], JobContext("any", "thing", None), True),
    (["database:docs"], JobContext("docs", "x", None), True),
    (["database:docs"], JobContext("Docs", "x", None), False),  # names are case-sensitive
    (["collection:docs/x"], JobContext("docs", "x", None), True),
    (["collection:docs/x"], JobContext("docs", "y", None), False),
    ([f"source:{SOURCE}"], JobContext("a", "b", SOURCE), True),
    ([f"source:{SOURCE}"], JobContext("a", "b", None), False),
    (["database:a", f"source:{SOURCE}"], JobContext("z", "b", SOURCE), True),
])
def test_a_scope_allows_a_job_when_any_entry_matches(
    entries: list[object], job: JobContext, allowed: bool
) -> None:
    assert Scope.parse(entries).allows(job) is allowed


def test_scope_authorizer_needs_a_lookup_only_for_restricted_teams() -> None:
    authorizer = ScopeAuthorizer({"all": Scope.parse(["*"]), "docs": Scope.parse(["database:d"])})
    assert not authorizer.needs_lookup("all")
    assert authorizer.needs_lookup("docs")
    assert authorizer.needs_lookup("unknown")  # fail closed
    authorizer.authorize_job("docs", JobContext("d", "c", None))
    with pytest.raises(RequestRejected) as info:
        authorizer.authorize_job("docs", JobContext("secret-db", "secret-coll", SOURCE))
    assert (info.value.status, info.value.code, info.value.outcome) == (
        403, "out_of_scope", "forbidden")
    assert "secret" not in info.value.message and SOURCE not in info.value.message


# -- a bulk cancel's selector (issue 17, finding 7) ---------------------------------------------


def selector_refused(scope: list[str], **selector: str) -> bool:
    authorizer = ScopeAuthorizer({"t": Scope.parse(scope)})
    try:
        authorizer.authorize_selector("t", **selector)  # type: ignore[arg-type]
    except RequestRejected as exc:
        assert (exc.status, exc.code, exc.outcome) == (403, "out_of_scope", "forbidden")
        return True
    return False


SRC = "0b8e1d2c-3a4f-4b5c-8d6e-7f8091a2b3c4"
OTHER_SRC = "1b8e1d2c-3a4f-4b5c-8d6e-7f8091a2b3c4"


def test_a_database_selector_needs_a_database_or_collection_entry_of_it() -> None:
    assert not selector_refused(["database:docs"], database_name="docs")
    assert not selector_refused(["collection:docs/handbook"], database_name="docs")
    assert selector_refused(["database:docs", "collection:wiki/x"], database_name="payroll")
    assert selector_refused([f"source:{SRC}"], database_name="docs")
    assert not selector_refused(["*"], database_name="anything")


def test_a_source_selector_is_refused_only_when_only_other_sources_are_in_scope() -> None:
    assert not selector_refused([f"source:{SRC}"], source_id=SRC)
    assert selector_refused([f"source:{SRC}"], source_id=OTHER_SRC)
    assert not selector_refused(["database:docs"], source_id=OTHER_SRC)
    assert not selector_refused([f"source:{SRC}", "collection:d/c"], source_id=OTHER_SRC)
    assert not selector_refused(["*"], source_id=OTHER_SRC)


def test_an_unknown_team_may_select_nothing() -> None:
    with pytest.raises(RequestRejected):
        ScopeAuthorizer({}).authorize_selector("ghost", source_id=SRC)
