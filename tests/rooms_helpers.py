"""Small HTTP helpers shared by the room and sync tests."""

from __future__ import annotations

import itertools
from typing import Any

from tests.conftest import auth, register

V3 = "/_matrix/client/v3"
_txn = itertools.count()


class User:
    """A registered user driving the API through the test client."""

    def __init__(self, client: Any, reg: dict[str, Any]) -> None:
        self.client = client
        self.user_id: str = reg["user_id"]
        self.token: str = reg["access_token"]
        self.h = auth(self.token)

    @classmethod
    async def new(cls, client: Any, name: str) -> "User":
        return cls(client, await register(client, name))

    async def call(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        resp = await self.client.request(method, V3 + path, headers=self.h, **kwargs)
        body = await resp.json()
        assert resp.status == expect, (method, path, resp.status, body)
        return body

    async def create_room(self, **body: Any) -> str:
        return (await self.call("POST", "/createRoom", json=body))["room_id"]

    async def send(self, room_id: str, body: str, expect: int = 200) -> Any:
        result = await self.call("PUT", f"/rooms/{room_id}/send/m.room.message/t{next(_txn)}", expect=expect,
                                 json={"msgtype": "m.text", "body": body})
        return result.get("event_id", result)

    async def sync(self, since: str | None = None, timeout: int = 0, **params: Any) -> Any:
        query = {"timeout": str(timeout), **params}
        if since:
            query["since"] = since
        return await self.call("GET", "/sync", params=query)
