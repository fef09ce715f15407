"""User-interactive authentication (Client-Server API, "User-Interactive Authentication API").

A session remembers which stages the client has completed; the request goes
through once every stage of one advertised flow is done. For registration the
session also remembers the request's parameters (a later request of the round may
carry only `auth`) and, once done, the answer, so a retry gets the same response.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from homeserver.ephemeral import Ephemeral
from homeserver.errors import MatrixError, UIARequired, bad_json

# A stage checker validates the client's auth dict and returns what the stage
# established (e.g. {"email": ...}); it raises MatrixError if the stage failed.
StageChecker = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

SESSION_TTL_S = 900


@dataclass(frozen=True)
class Completed:
    """A session whose flow is complete."""

    session: str
    results: dict[str, dict[str, Any]]
    # The parameters remembered over the round, overridden by those this request gave.
    request: dict[str, Any]
    # The answer already given for this session (see `finish`): give it again.
    response: dict[str, Any] | None


class InteractiveAuth:
    def __init__(self, store: Ephemeral) -> None:
        self._store = store

    async def run(self, auth: object, flows: list[list[str]], checkers: dict[str, StageChecker],
                  params: dict[str, Any] | None = None, bind: str = "") -> dict[str, dict[str, Any]]:
        """Return each completed stage's result once a flow is complete; else raise UIARequired.

        `bind` ties a session to one operation (e.g. one user's password change)
        so a session completed for one request cannot authorise another. The session
        ends with the flow.
        """
        done = await self._advance(auth, flows, checkers, params or {}, bind, None)
        await self._store.delete(f"uia:{done.session}")
        return done.results

    async def run_remembering(self, auth: object, flows: list[list[str]], checkers: dict[str, StageChecker],
                              request: dict[str, Any], bind: str = "") -> Completed:
        """Like `run`, with the session keeping `request` (the parameters besides `auth`).

        The completed session lives on until it expires, so that after `finish` a retry of the
        request answers the same; the caller answers `Completed.response` when it is set.
        """
        return await self._advance(auth, flows, checkers, {}, bind, request)

    async def answered(self, auth: object, bind: str) -> dict[str, Any] | None:
        """The answer already given to the request of `auth`'s session, if it was completed and answered."""
        session_id = auth.get("session") if isinstance(auth, dict) else None
        if not isinstance(session_id, str):
            return None
        session = await self._store.get(f"uia:{session_id}")
        if session is None or session.get("bind") != bind:
            return None
        response: dict[str, Any] | None = session.get("response")
        return response

    async def finish(self, session_id: str, response: dict[str, Any]) -> None:
        """Record the answer to a completed session's request, for retries."""
        key = f"uia:{session_id}"
        session = await self._store.get(key)
        if session is not None:
            await self._store.put(key, {**session, "response": response}, SESSION_TTL_S)

    async def _advance(self, auth: object, flows: list[list[str]], checkers: dict[str, StageChecker],
                       params: dict[str, Any], bind: str, request: dict[str, Any] | None) -> Completed:
        if auth is None:
            raise UIARequired(self._body(flows, params, await self._new_session(bind, request), []))
        if not isinstance(auth, dict):
            raise bad_json("auth must be an object")
        session_id = auth.get("session")
        if session_id is None:
            session_id = await self._new_session(bind, None)
        if not isinstance(session_id, str):
            raise bad_json("auth.session must be a string")
        key = f"uia:{session_id}"
        session = await self._store.get(key)
        if session is None or session.get("bind") != bind:
            raise MatrixError(400, "M_UNKNOWN", "Unknown or expired auth session")
        completed: list[str] = session["completed"]
        results: dict[str, dict[str, Any]] = session["results"]
        changed = False
        if request is not None:
            merged = {**session.get("request", {}), **request}
            changed = merged != session.get("request")
            session["request"] = merged
        if session.get("response") is not None:
            return Completed(session_id, results, session.get("request", {}), session["response"])

        stage = auth.get("type")
        if stage is not None and not isinstance(stage, str):
            raise bad_json("auth.type must be a string")
        try:
            if stage is not None:
                allowed = {s for flow in flows for s in flow}
                if stage not in allowed or stage not in checkers:
                    body = self._body(flows, params, session_id, completed)
                    raise UIARequired({**body, "errcode": "M_UNRECOGNIZED", "error": f"Unknown auth stage {stage!r}"})
                try:
                    results[stage] = await checkers[stage](auth)
                except MatrixError as e:
                    if e.status == 429:
                        raise
                    body = self._body(flows, params, session_id, completed)
                    raise UIARequired({**body, "errcode": e.errcode, "error": e.error}) from None
                if stage not in completed:
                    completed.append(stage)
                changed = True
        finally:
            if changed:
                await self._store.put(key, session, SESSION_TTL_S)

        if any(all(s in completed for s in flow) for flow in flows):
            return Completed(session_id, results, session.get("request", {}), None)
        raise UIARequired(self._body(flows, params, session_id, completed))

    async def _new_session(self, bind: str, request: dict[str, Any] | None) -> str:
        session_id = secrets.token_urlsafe(18)
        session: dict[str, Any] = {"completed": [], "results": {}, "bind": bind}
        if request is not None:
            session["request"] = request
        await self._store.put(f"uia:{session_id}", session, SESSION_TTL_S)
        return session_id

    @staticmethod
    def _body(flows: list[list[str]], params: dict[str, Any], session: str, completed: list[str]) -> dict[str, Any]:
        return {"flows": [{"stages": f} for f in flows], "params": params, "session": session,
                "completed": list(completed)}
