"""Server-side room key backups: versions (one live at a time) and the keys in them.

A key for a session replaces the one held only if it is better: verified beats unverified, then
a lower first message index, then fewer forwards. Every change to a version's keys moves its etag.
"""

from __future__ import annotations

from typing import Any

from homeserver.errors import MatrixError, bad_json, not_found
from storage.e2ee import BackedUpKey, BackupVersion
from storage.store import Store

MAX_KEYS_PER_UPLOAD = 10_000


def keeps_held(held: BackedUpKey, new: BackedUpKey) -> bool:
    """Whether the key held is at least as good as the new one (so the new one is dropped)."""
    if held.is_verified != new.is_verified:
        return held.is_verified
    if held.first_message_index != new.first_message_index:
        return held.first_message_index < new.first_message_index
    return held.forwarded_count <= new.forwarded_count


def parse_version(raw: object) -> int:
    if not isinstance(raw, str) or not raw.isdigit() or len(raw) > 18:
        raise not_found("Unknown backup version")
    return int(raw)


def _key(room_id: str, session_id: str, data: object) -> BackedUpKey:
    if not isinstance(data, dict):
        raise bad_json("key data must be an object")
    fmi, fwd, verified, session = (data.get("first_message_index"), data.get("forwarded_count"),
                                   data.get("is_verified"), data.get("session_data"))
    if not (isinstance(fmi, int) and not isinstance(fmi, bool) and fmi >= 0
            and isinstance(fwd, int) and not isinstance(fwd, bool) and fwd >= 0
            and isinstance(verified, bool) and isinstance(session, (dict, str))):
        raise bad_json("key data needs first_message_index, forwarded_count, is_verified and session_data")
    return BackedUpKey(room_id, session_id, fmi, fwd, verified, session)


def parse_keys(body: dict[str, Any], room_id: str | None, session_id: str | None) -> list[BackedUpKey]:
    """The keys of a PUT at any of the three levels."""
    if room_id is not None and session_id is not None:
        return [_key(room_id, session_id, body)]
    rooms = {room_id: body} if room_id is not None else body.get("rooms")
    if not isinstance(rooms, dict):
        raise bad_json("rooms must be an object")
    keys = []
    for rid, room in rooms.items():
        sessions = room.get("sessions") if isinstance(room, dict) else None
        if not isinstance(sessions, dict):
            raise bad_json("sessions must be an object")
        keys += [_key(rid, sid, data) for sid, data in sessions.items()]
    if len(keys) > MAX_KEYS_PER_UPLOAD:
        raise MatrixError(400, "M_LIMIT_EXCEEDED", f"at most {MAX_KEYS_PER_UPLOAD} keys per request")
    return keys


class KeyBackups:
    def __init__(self, store: Store) -> None:
        self._store = store

    @staticmethod
    def _check(body: dict[str, Any]) -> tuple[str, Any]:
        algorithm, auth_data = body.get("algorithm"), body.get("auth_data")
        # auth_data is an object in the spec; older clients and suites send an opaque string.
        if not isinstance(algorithm, str) or not isinstance(auth_data, (dict, str)):
            raise bad_json("algorithm (a string) and auth_data (an object) are required")
        return algorithm, auth_data

    async def create(self, user_id: str, body: dict[str, Any]) -> str:
        algorithm, auth_data = self._check(body)
        return str(await self._store.e2ee.create_backup(user_id, algorithm, auth_data))

    async def info(self, user_id: str, version: str | None) -> dict[str, Any]:
        found = await self._store.e2ee.backup(user_id, None if version is None else parse_version(version))
        if found is None:
            raise not_found("No current backup version" if version is None else "Unknown backup version")
        return {"algorithm": found.algorithm, "auth_data": found.auth_data, "version": str(found.version),
                "etag": str(found.etag), "count": await self._store.e2ee.backup_count(user_id, found.version)}

    async def update(self, user_id: str, version: str, body: dict[str, Any]) -> None:
        number = parse_version(version)
        algorithm, auth_data = self._check(body)
        if body.get("version") not in (None, version):
            raise MatrixError(400, "M_INVALID_PARAM", "version in the body does not match the path")
        held = await self._store.e2ee.backup(user_id, number)
        if held is None:
            raise not_found("Unknown backup version")
        if held.algorithm != algorithm:
            raise MatrixError(400, "M_INVALID_PARAM", "the algorithm of a backup cannot change")
        await self._store.e2ee.update_backup(user_id, number, auth_data)

    async def delete(self, user_id: str, version: str) -> None:
        if not await self._store.e2ee.delete_backup(user_id, parse_version(version)):
            raise not_found("Unknown backup version")

    async def _current(self, user_id: str, version: object) -> BackupVersion:
        """Writes go to the live version only (403 M_WRONG_ROOM_KEYS_VERSION otherwise)."""
        current = await self._store.e2ee.backup(user_id, None)
        if not isinstance(version, str):
            raise MatrixError(400, "M_MISSING_PARAM", "version is required")
        if current is None or str(current.version) != version:
            raise MatrixError(403, "M_WRONG_ROOM_KEYS_VERSION", "that is not the current backup version",
                              current_version=str(current.version) if current else None)
        return current

    async def put_keys(self, user_id: str, version: object, body: dict[str, Any], room_id: str | None,
                       session_id: str | None) -> dict[str, Any]:
        current = await self._current(user_id, version)
        keys = parse_keys(body, room_id, session_id)
        done = await self._store.e2ee.put_backed_up_keys(user_id, current.version, keys, keeps_held)
        if done is None:
            raise MatrixError(403, "M_WRONG_ROOM_KEYS_VERSION", "that is not the current backup version")
        return {"etag": str(done[0]), "count": done[1]}

    async def get_keys(self, user_id: str, version: object, room_id: str | None,
                       session_id: str | None) -> dict[str, Any]:
        found = await self._store.e2ee.backup(user_id, parse_version(version))
        if found is None:
            raise not_found("Unknown backup version")
        keys = await self._store.e2ee.backed_up_keys(user_id, found.version, room_id, session_id)
        if session_id is not None:
            if not keys:
                raise not_found("No key for that session")
            return keys[0].to_json()
        rooms: dict[str, Any] = {}
        for k in keys:
            rooms.setdefault(k.room_id, {"sessions": {}})["sessions"][k.session_id] = k.to_json()
        if room_id is not None:
            return rooms.get(room_id, {"sessions": {}})
        return {"rooms": rooms}

    async def delete_keys(self, user_id: str, version: object, room_id: str | None,
                          session_id: str | None) -> dict[str, Any]:
        number = parse_version(version)
        done = await self._store.e2ee.delete_backed_up_keys(user_id, number, room_id, session_id)
        if done is None:
            raise not_found("Unknown backup version")
        return {"etag": str(done[0]), "count": done[1]}
