"""The federation side of a HomeServer: wires keys, client, ingester, sender and remote membership
into the domain's hooks, and handles inbound EDUs."""

from __future__ import annotations

import logging
from functools import partial
from urllib.parse import quote
from typing import Any

from aiohttp import web

from federation.backfill import Backfiller
from federation.e2ee import E2EE_EDUS
from federation.ingest import Ingester, server_of
from federation.hierarchy import remote_hierarchy
from federation.public_rooms import remote_public_rooms
from federation.remote_rooms import RemoteRooms
from federation.sender import FederationSender
from homeserver.errors import MatrixError, not_found
from homeserver.events.event import Event
from homeserver.rooms.membership import Membership
from homeserver.rooms.room_data import RoomData
from homeserver.rooms.rooms import Rooms
from homeserver.rooms.server_acl import ServerAcls
from homeserver.sync.typing_state import Typing
from storage.store import Store

q = partial(quote, safe="")  # IDs as path segments

log = logging.getLogger("whispr.federation")


class Federation:
    def __init__(self, server_name: str, store: Store, rooms: Rooms, membership: Membership, typing: Typing,
                 room_data: RoomData, keyring: Any, client: Any, min_retry_ms: int, max_retry_ms: int) -> None:
        self.server_name = server_name
        self.keyring = keyring
        self.client = client
        self._store = store
        self._rooms = rooms
        self._typing = typing
        self._room_data = room_data
        self.ingester = Ingester(server_name, rooms, keyring, client)
        self.acls = ServerAcls(rooms)
        self.sender = FederationSender(server_name, store, client, min_retry_ms, max_retry_ms)
        self.remote_rooms = RemoteRooms(server_name, rooms, store, client, self.ingester, keyring)
        self.backfiller = Backfiller(server_name, rooms, store, self.ingester, client)
        rooms.on_local_event.append(self._local_event)
        typing.on_local_change.append(self._local_typing)
        room_data.on_local_receipt.append(self._local_receipt)
        membership.remote = self
        # Encryption EDUs (federation/e2ee.py), wired in by the server.
        self.e2ee: Any = None
        # Presence EDUs (federation/presence.py), wired in by the server.
        self.presence: Any = None

    async def start(self) -> None:
        await self.sender.start()

    async def close(self) -> None:
        await self.sender.close()

    async def authenticate(self, request: web.Request) -> str:
        from federation.request_auth import authenticate_request

        return await authenticate_request(request, self.keyring, self.server_name)

    # --- domain hooks: what local users do reaches the other servers ---------------------

    async def _local_event(self, event: Event, state_group: int | None) -> None:
        if server_of(event.sender) == self.server_name:
            servers = await self._rooms.joined_servers(state_group) if state_group is not None else None
            await self.sender.send_event(event, servers=servers)

    async def _local_typing(self, room_id: str, user_id: str, typing: bool, timeout_ms: int) -> None:
        servers = await self._store.rooms.room_servers(room_id)
        await self.sender.send_edu(servers, "m.typing", {"room_id": room_id, "user_id": user_id, "typing": typing})

    async def _local_receipt(self, room_id: str, receipt_type: str, user_id: str, event_id: str, ts: int) -> None:
        if receipt_type != "m.read":  # private receipts stay home
            return
        servers = await self._store.rooms.room_servers(room_id)
        content = {room_id: {"m.read": {user_id: {"event_ids": [event_id], "data": {"ts": ts}}}}}
        await self.sender.send_edu(servers, "m.receipt", content)

    # --- remote membership, called by Membership --------------------------------------

    async def join(self, room_id: str, user_id: str, servers: list[str], content: dict[str, Any]) -> None:
        await self.remote_rooms.join(room_id, user_id, servers, content)

    async def knock(self, room_id: str, user_id: str, servers: list[str], content: dict[str, Any]) -> None:
        await self.remote_rooms.knock(room_id, user_id, servers, content)

    async def countersign_invite(self, event: Event) -> Event:
        return await self.remote_rooms.countersign_invite(event)

    async def reject_invite(self, room_id: str, user_id: str, inviter_server: str) -> None:
        await self.remote_rooms.reject_invite(room_id, user_id, inviter_server)

    async def resolve_alias(self, alias: str) -> tuple[str, list[str]]:
        server = alias.split(":", 1)[1] if ":" in alias else ""
        try:
            body = await self.client.get_json(server, "/_matrix/federation/v1/query/directory",
                                              {"room_alias": alias})
        except Exception as e:
            if getattr(e, "status", None) == 404:
                raise not_found("Room alias not found") from None
            raise MatrixError(502, "M_UNKNOWN", f"Could not ask {server} about {alias}: {e}") from None
        room_id, servers = body.get("room_id"), body.get("servers", [])
        if not isinstance(room_id, str):
            raise MatrixError(502, "M_UNKNOWN", f"{server} answered without a room ID")
        return room_id, [s for s in servers if isinstance(s, str)] or [server]

    async def public_rooms(self, server: str, query: dict[str, Any]) -> dict[str, Any]:
        return await remote_public_rooms(self.client, server, query)

    async def hierarchy(self, servers: list[str], room_id: str, suggested_only: bool) -> dict[str, Any] | None:
        return await remote_hierarchy(self.client, servers, room_id, suggested_only)

    async def timestamp_to_event(self, servers: list[str], room_id: str, ts: int,
                                 direction: str) -> tuple[str, int] | None:
        """The first well-formed answer of `servers` on the right side of `ts`."""
        for server in servers:
            try:
                body = await self.client.get_json(server, f"/_matrix/federation/v1/timestamp_to_event/{q(room_id)}",
                                                  {"ts": str(ts), "dir": direction})
            except Exception as e:
                log.info("no event at %s in %s from %s: %s", ts, room_id, server, e)
                continue
            event_id = body.get("event_id") if isinstance(body, dict) else None
            found_ts = body.get("origin_server_ts") if isinstance(body, dict) else None
            if not isinstance(event_id, str) or not event_id.startswith("$") or len(event_id) > 255 \
                    or not isinstance(found_ts, int) or isinstance(found_ts, bool) \
                    or (found_ts < ts if direction == "f" else found_ts > ts):
                log.info("%s answered timestamp_to_event in %s with nonsense", server, room_id)
                continue
            return event_id, found_ts
        return None

    async def query_profile(self, user_id: str) -> dict[str, Any]:
        """A remote user's profile (string fields only, as a client may show them)."""
        server = server_of(user_id)
        try:
            body = await self.client.get_json(server, "/_matrix/federation/v1/query/profile", {"user_id": user_id})
        except Exception as e:
            if getattr(e, "status", None) == 404:
                raise not_found("Profile not found") from None
            raise MatrixError(502, "M_UNKNOWN", f"Could not ask {server} for the profile: {e}") from None
        if not isinstance(body, dict):
            raise MatrixError(502, "M_UNKNOWN", f"{server} answered with a malformed profile")
        return {k: v for k, v in body.items() if isinstance(k, str) and isinstance(v, str) and len(v) <= 4096}

    # --- inbound EDUs ------------------------------------------------------------------

    async def receive_edu(self, origin: str, edu: Any) -> None:
        if not isinstance(edu, dict) or not isinstance(edu.get("content"), dict):
            return
        kind, content = edu.get("edu_type"), edu["content"]
        if kind == "m.typing":
            room_id, user_id = content.get("room_id"), content.get("user_id")
            if not isinstance(room_id, str) or not isinstance(user_id, str) or server_of(user_id) != origin:
                return
            if not await self.acls.allows(origin, room_id):
                return  # the room's server ACL denies the sending server
            if await self._rooms.membership(room_id, user_id) != "join":
                return
            timeout = content.get("timeout", 30_000)
            await self._typing.set(room_id, user_id, content.get("typing") is True,
                                   timeout if isinstance(timeout, int) else 30_000, local=False)
        elif kind == "m.receipt":
            for room_id, by_type in content.items():
                if not isinstance(by_type, dict) or not await self.acls.allows(origin, room_id):
                    continue  # all of a room's receipts go when its server ACL denies the sender
                for user_id, receipt in (by_type.get("m.read") or {}).items():
                    if server_of(user_id) != origin or not isinstance(receipt, dict):
                        continue
                    event_ids = receipt.get("event_ids") or []
                    if event_ids and isinstance(event_ids[0], str):
                        try:
                            await self._room_data.receipt(user_id, room_id, "m.read", event_ids[0], local=False)
                        except MatrixError as e:
                            log.info("ignoring a receipt from %s: %s", origin, e.error)
        elif kind in E2EE_EDUS and self.e2ee is not None:
            await self.e2ee.receive_edu(origin, kind, content)
        elif kind == "m.presence" and self.presence is not None:
            await self.presence.receive(origin, content)
        # Others: accepted and ignored.
