"""The scope check of a cancel: may this team cancel this job? (The scope itself, parsed from
the config, is `gateway.config.scope.Scope`.)"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.config.scope import Scope
from gateway.errors import RequestRejected
from gateway.jobs import JobContext


class ScopeAuthorizer:
    """The sibling of `auth.Authorizer` that needs the job: may this team cancel this job?

    A team whose scope is not `["*"]` needs a lookup before its cancel can be decided; the
    refusal never names what the job touches, so it can't be used to probe other teams'.
    """

    def __init__(self, scopes: Mapping[str, Scope]) -> None:
        self._scopes = dict(scopes)

    def needs_lookup(self, team: str) -> bool:
        scope = self._scopes.get(team)
        return scope is None or not scope.unrestricted

    def authorize_job(self, team: str, job: JobContext) -> None:
        scope = self._scopes.get(team)
        if scope is None or not scope.allows(job):
            raise out_of_scope(team)

    def authorize_selector(
        self, team: str, *, source_id: str | None = None, database_name: str | None = None
    ) -> None:
        """Whether a bulk cancel's selector could match anything in the team's scope, else 403
        `out_of_scope` before anything is listed (a listing would show other teams' ids).

        A `database_name` must be a `database:` entry or the database of a `collection:`
        entry. A `source_id` is refused only when every entry is a `source:` entry and none is
        that source: with database or collection entries, a source's jobs may lie in them.
        """
        scope = self._scopes.get(team)
        if scope is None:
            raise out_of_scope(team)
        if scope.unrestricted:
            return
        if database_name is not None:
            if database_name in scope.databases or any(
                    database == database_name for database, _ in scope.collections):
                return
            raise out_of_scope(team, "this database_name")
        if source_id is not None and not scope.databases and not scope.collections and (
                source_id not in scope.sources):
            raise out_of_scope(team, "this source_id")


def out_of_scope(team: str, what: str = "this invocation") -> RequestRejected:
    return RequestRejected(
        f"team {team!r} may not cancel {what}: it is outside the team's scope",
        status=403, code="out_of_scope", outcome="forbidden",
    )
