"""User-interactive authentication (Client-Server API, "User-Interactive Authentication API").

A session remembers which stages the client has completed; the request goes
through once every stage of one advertised flow is done.
"""

from __future__ import annotations

import secrets
from typing import Any, Awaitable, Callable

from homeserver.ephemeral import Ephemeral
from homeserver.errors import MatrixError, UIARequired, bad_json

# A stage checker validates the client's auth dict and returns what the stage
# established (e.g. {"email": ...}); it raises MatrixError if the stage failed.
StageChecker = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

SESSION_TTL_S = 900


class InteractiveAuth:
    def __init__(self, store: Ephemeral) -> None:
        self._store = store

    async def run(self, auth: object, flows: list[list[str]], checkers: dict[str, StageChecker],
                  params: dict[str, Any] | None = None, bind: str = "") -> dict[str, dict[str, Any]]:
        """Return each completed stage's result once a flow is complete; else raise UIARequired.

        `bind` ties a session to one operation (e.g. one user's password change)
        so a session completed for one request cannot authorise another.
        """
        params = params or {}
        if auth is None:
            session_id = await self._new_session(bind)
            raise UIARequired(self._body(flows, params, session_id, []))
        if not isinstance(auth, dict):
            raise bad_json("auth must be an object")
        session_id = auth.get("session")
        if session_id is None:
            session_id = await self._new_session(bind)
        if not isinstance(session_id, str):
            raise bad_json("auth.session must be a string")
        session = await self._store.get(f"uia:{session_id}")
        if session is None or session.get("bind") != bind:
            raise MatrixError(400, "M_UNKNOWN", "Unknown or expired auth session")
        completed: list[str] = session["completed"]
        results: dict[str, dict[str, Any]] = session["results"]

        stage = auth.get("type")
        if stage is not None and not isinstance(stage, str):
            raise bad_json("auth.type must be a string")
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
            await self._store.put(f"uia:{session_id}", session, SESSION_TTL_S)

        if any(all(s in completed for s in flow) for flow in flows):
            await self._store.delete(f"uia:{session_id}")
            return results
        raise UIARequired(self._body(flows, params, session_id, completed))

    async def _new_session(self, bind: str) -> str:
        session_id = secrets.token_urlsafe(18)
        await self._store.put(f"uia:{session_id}", {"completed": [], "results": {}, "bind": bind}, SESSION_TTL_S)
        return session_id

    @staticmethod
    def _body(flows: list[list[str]], params: dict[str, Any], session: str, completed: list[str]) -> dict[str, Any]:
        return {"flows": [{"stages": f} for f in flows], "params": params, "session": session,
                "completed": list(completed)}
