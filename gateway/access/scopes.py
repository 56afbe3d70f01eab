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


def out_of_scope(team: str) -> RequestRejected:
    return RequestRejected(
        f"team {team!r} may not cancel this invocation: it is outside the team's scope",
        status=403, code="out_of_scope", outcome="forbidden",
    )
