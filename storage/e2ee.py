"""End-to-end encryption storage: device, one-time, fallback and cross-signing keys, device list
changes, to-device messages and room key backups.

A one-time key is handed out by a single DELETE ... RETURNING, so concurrent claims (in any
process) never take the same key: a row deleted by one is gone for the other. SQLite runs each
statement alone under its write lock; on PostgreSQL rows are picked FOR UPDATE SKIP LOCKED, so
concurrent claims take different keys and none comes back empty while keys remain.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from storage.database import Connection, Database
from storage.json_text import dump, load
from storage.rooms import next_stream

CHUNK = 500
_RETURNING = " RETURNING user_id, device_id, algorithm, key_id, key_json"


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _chunks(items: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), CHUNK):
        yield list(items[start:start + CHUNK])


@dataclass(frozen=True)
class StoredDeviceKeys:
    user_id: str
    device_id: str
    keys: dict[str, Any] | None
    display_name: str | None


@dataclass(frozen=True)
class ToDeviceMessage:
    stream: int
    sender: str
    type: str
    content: dict[str, Any]


@dataclass(frozen=True)
class QueuedToDevice:
    """A stored send: its stream position, and the devices that got nothing (their inbox was full)."""

    stream: int
    full: frozenset[tuple[str, str]]


@dataclass(frozen=True)
class BackupVersion:
    version: int
    algorithm: str
    auth_data: Any
    etag: int


@dataclass(frozen=True)
class BackedUpKey:
    room_id: str
    session_id: str
    first_message_index: int
    forwarded_count: int
    is_verified: bool
    session_data: Any

    def to_json(self) -> dict[str, Any]:
        return {"first_message_index": self.first_message_index, "forwarded_count": self.forwarded_count,
                "is_verified": self.is_verified, "session_data": self.session_data}


async def record_device_list_change(tx: Connection, user_ids: Sequence[str]) -> int:
    """Take a stream position for a change of these users' devices or keys (inside `tx`)."""
    stream = await next_stream(tx)
    await tx.executemany("INSERT INTO device_list_changes (stream, user_id) VALUES (?, ?)",
                         [(stream, u) for u in dict.fromkeys(user_ids)])
    return stream


class E2eeStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- device keys --------------------------------------------------------------------

    async def device_keys(self, user_id: str, device_id: str) -> dict[str, Any] | None:
        raw = await self.db.fetchval("SELECT key_json FROM e2e_device_keys WHERE user_id = ? AND device_id = ?",
                                     user_id, device_id)
        return None if raw is None else load(raw)

    async def set_device_keys(self, user_id: str, device_id: str, keys: dict[str, Any]) -> int:
        """Store a local device's keys; returns the stream position of the device list change."""
        async with self.db.transaction() as tx:
            stream = await record_device_list_change(tx, [user_id])
            await tx.execute(
                "INSERT INTO e2e_device_keys (user_id, device_id, key_json) VALUES (?, ?, ?)"
                " ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json",
                user_id, device_id, dump(keys))
        return stream

    async def devices_of(self, user_ids: Sequence[str]) -> list[StoredDeviceKeys]:
        """Every device with keys of these users; local display names from the device table."""
        found: list[StoredDeviceKeys] = []
        for chunk in _chunks(list(user_ids)):
            rows = await self.db.fetchall(
                "SELECT k.user_id, k.device_id, k.key_json, COALESCE(d.display_name, k.display_name)"
                " AS display_name FROM e2e_device_keys k LEFT JOIN devices d ON d.user_id = k.user_id"
                f" AND d.device_id = k.device_id WHERE k.user_id IN ({_marks(len(chunk))})", *chunk)
            found += [StoredDeviceKeys(r["user_id"], r["device_id"],
                                       None if r["key_json"] is None else load(r["key_json"]),
                                       r["display_name"]) for r in rows]
        return found

    async def delete_devices(self, user_id: str, device_ids: Sequence[str]) -> list[tuple[str, int]]:
        """Remove the devices' keys and waiting messages; (device, stream position of its change) for
        each: one position per device, so each update over federation follows the one before."""
        if not device_ids:
            return []
        marks = _marks(len(device_ids))
        async with self.db.transaction() as tx:
            # The stream positions first: like every writer here, take the counter's lock before any row's.
            changes = [(d, await record_device_list_change(tx, [user_id])) for d in sorted(set(device_ids))]
            for table in ("e2e_device_keys", "e2e_one_time_keys", "e2e_fallback_keys", "to_device_inbox",
                          "to_device_txns"):
                await tx.execute(f"DELETE FROM {table} WHERE user_id = ? AND device_id IN ({marks})",
                                 user_id, *device_ids)
            return changes

    # --- one-time and fallback keys --------------------------------------------------------

    async def one_time_keys(self, user_id: str, device_id: str, key_ids: Sequence[tuple[str, str]]
                            ) -> dict[tuple[str, str], str]:
        """The stored JSON of those (algorithm, key ID)s that exist."""
        found: dict[tuple[str, str], str] = {}
        wanted = {k for _, k in key_ids}
        for chunk in _chunks(sorted(wanted)):
            rows = await self.db.fetchall(
                "SELECT algorithm, key_id, key_json FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ?"
                f" AND key_id IN ({_marks(len(chunk))})", user_id, device_id, *chunk)
            found.update({(r["algorithm"], r["key_id"]): r["key_json"] for r in rows})
        return found

    async def add_one_time_keys(self, user_id: str, device_id: str, keys: Sequence[tuple[str, str, Any]]) -> None:
        await self.db.executemany(
            "INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING", [(user_id, device_id, alg, kid, dump(v)) for alg, kid, v in keys])

    async def set_fallback_keys(self, user_id: str, device_id: str, keys: Sequence[tuple[str, str, Any]]) -> None:
        """Replace the fallback key of each algorithm; the same key again keeps its `used` mark."""
        async with self.db.transaction() as tx:
            await tx.executemany(
                "INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)"
                " VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET"
                " used = CASE WHEN e2e_fallback_keys.key_id = excluded.key_id"
                " AND e2e_fallback_keys.key_json = excluded.key_json THEN e2e_fallback_keys.used ELSE 0 END,"
                " key_id = excluded.key_id, key_json = excluded.key_json",
                [(user_id, device_id, alg, kid, dump(v)) for alg, kid, v in keys])

    async def key_counts(self, user_id: str, device_id: str) -> tuple[dict[str, int], list[str]]:
        """(one-time keys left per algorithm, algorithms whose fallback key is unused), one query."""
        rows = await self.db.fetchall(
            "SELECT 'otk' AS kind, algorithm, COUNT(*) AS n FROM e2e_one_time_keys WHERE user_id = ?"
            " AND device_id = ? GROUP BY algorithm UNION ALL SELECT 'fallback' AS kind, algorithm, 0 AS n"
            " FROM e2e_fallback_keys WHERE user_id = ? AND device_id = ? AND used = 0",
            user_id, device_id, user_id, device_id)
        counts = {r["algorithm"]: int(r["n"]) for r in rows if r["kind"] == "otk"}
        return counts, sorted(r["algorithm"] for r in rows if r["kind"] == "fallback")

    async def claim(self, user_id: str, device_id: str, algorithm: str) -> tuple[str, dict[str, Any]] | None:
        """Take the oldest one-time key (atomically, never the same twice), else the fallback key."""
        lock = " FOR UPDATE SKIP LOCKED" if self.db.engine == "postgres" else ""
        row = await self.db.fetchone(
            "DELETE FROM e2e_one_time_keys WHERE id IN (SELECT id FROM e2e_one_time_keys WHERE user_id = ?"
            f" AND device_id = ? AND algorithm = ? ORDER BY id LIMIT 1{lock}) RETURNING key_id, key_json",
            user_id, device_id, algorithm)
        if row is None:
            row = await self.db.fetchone(
                "UPDATE e2e_fallback_keys SET used = 1 WHERE user_id = ? AND device_id = ? AND algorithm = ?"
                " RETURNING key_id, key_json", user_id, device_id, algorithm)
        return None if row is None else (row["key_id"], load(row["key_json"]))

    async def claim_many(self, wanted: Sequence[tuple[str, str, str]],
                         known_empty: Collection[tuple[str, str, str]] = ()
                         ) -> tuple[dict[tuple[str, str, str], tuple[str, dict[str, Any]]], list[tuple[str, str, str]]]:
        """Claim for many (user, device, algorithm) at once: one statement takes the oldest one-time key
        of each (but those the caller knows have none left, `known_empty`), one more hands out the
        fallback keys of those without. The keys, and the wanted that had no one-time key.

        On PostgreSQL each device's row is picked FOR UPDATE SKIP LOCKED, so a concurrent claim takes
        another key instead of making this one miss; a miss means no key is left."""
        found: dict[tuple[str, str, str], tuple[str, dict[str, Any]]] = {}
        wanted = list(dict.fromkeys(wanted))
        if self.db.engine == "postgres":
            pick = ("DELETE FROM e2e_one_time_keys WHERE id IN (SELECT k.id FROM (VALUES {values}) AS w(u, d, a)"
                    " CROSS JOIN LATERAL (SELECT id FROM e2e_one_time_keys WHERE user_id = w.u AND device_id = w.d"
                    " AND algorithm = w.a ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) k)")
        else:
            pick = ("DELETE FROM e2e_one_time_keys WHERE id IN (SELECT MIN(id) FROM e2e_one_time_keys"
                    " WHERE (user_id, device_id, algorithm) IN (VALUES {values})"
                    " GROUP BY user_id, device_id, algorithm)")
        empty = set(known_empty)
        picked = [t for t in wanted if t not in empty]
        if picked:
            found.update(await self._batch(picked, pick + _RETURNING))
        missing = [t for t in wanted if t not in found]
        if not missing:
            return found, missing
        # The fallback keys: marked used (rows locked in one order on PostgreSQL, so concurrent claims
        # cannot deadlock), then read, used or not; on PostgreSQL in one statement (its SELECT reads
        # the rows as they were before the UPDATE, which changes only `used`).
        read = ("SELECT user_id, device_id, algorithm, key_id, key_json FROM e2e_fallback_keys"
                " WHERE (user_id, device_id, algorithm) IN (VALUES {values})")
        if self.db.engine == "postgres":
            found.update(await self._batch(missing, (
                "WITH marked AS (UPDATE e2e_fallback_keys SET used = 1 WHERE (user_id, device_id, algorithm) IN"
                " (SELECT user_id, device_id, algorithm FROM e2e_fallback_keys WHERE used = 0 AND"
                " (user_id, device_id, algorithm) IN (VALUES {values})"
                " ORDER BY user_id, device_id, algorithm FOR UPDATE)) ") + read))
        else:
            await self._batch(missing, "UPDATE e2e_fallback_keys SET used = 1 WHERE used = 0 AND"
                                       " (user_id, device_id, algorithm) IN (VALUES {values})")
            found.update(await self._batch(missing, read))
        return found, missing

    async def _batch(self, targets: Sequence[tuple[str, str, str]], sql: str
                     ) -> dict[tuple[str, str, str], tuple[str, dict[str, Any]]]:
        found: dict[tuple[str, str, str], tuple[str, dict[str, Any]]] = {}
        for start in range(0, len(targets), CHUNK // 3):
            chunk = targets[start:start + CHUNK // 3]
            cast = "(?::text, ?::text, ?::text)" if self.db.engine == "postgres" else "(?, ?, ?)"
            values = ",".join(cast for _ in chunk)
            params = [v for t in chunk for v in t] * sql.count("{values}")  # each list takes its own
            rows = await self.db.fetchall(sql.format(values=values), *params)
            for r in rows:
                found[(r["user_id"], r["device_id"], r["algorithm"])] = (r["key_id"], load(r["key_json"]))
        return found

    # --- cross-signing keys -------------------------------------------------------------------

    async def cross_signing_keys(self, user_ids: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
        found: dict[str, dict[str, dict[str, Any]]] = {}
        for chunk in _chunks(list(user_ids)):
            rows = await self.db.fetchall(
                "SELECT user_id, key_type, key_json FROM e2e_cross_signing_keys"
                f" WHERE user_id IN ({_marks(len(chunk))})", *chunk)
            for r in rows:
                found.setdefault(r["user_id"], {})[r["key_type"]] = load(r["key_json"])
        return found

    async def set_cross_signing_keys(self, user_id: str, keys: dict[str, dict[str, Any]],
                                     record: bool = True) -> int | None:
        """Store the keys; the stream position of the device list change (None when `record` is off)."""
        async with self.db.transaction() as tx:
            stream = await record_device_list_change(tx, [user_id]) if record else None
            await tx.executemany(
                "INSERT INTO e2e_cross_signing_keys (user_id, key_type, key_json) VALUES (?, ?, ?)"
                " ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json",
                [(user_id, t, dump(k)) for t, k in keys.items()])
        return stream

    async def add_signatures(self, user_id: str, device_sigs: dict[str, dict[str, Any]],
                             master_sigs: dict[str, Any] | None,
                             user_sigs: Sequence[tuple[str, str, str]]) -> int:
        """Store checked signatures: on the user's own devices (device ID -> new signatures of the user),
        on their own master key, and (target user, key ID, signature) by their user-signing key."""
        async with self.db.transaction() as tx:
            changed = [user_id] if device_sigs or master_sigs else []
            changed += [t for t, _, _ in user_sigs]
            stream = await record_device_list_change(tx, changed or [user_id])
            for device_id, sigs in device_sigs.items():
                raw = await tx.fetchval("SELECT key_json FROM e2e_device_keys WHERE user_id = ? AND device_id = ?",
                                        user_id, device_id)
                if raw is None:
                    continue
                keys = load(raw)
                keys.setdefault("signatures", {}).setdefault(user_id, {}).update(sigs)
                await tx.execute("UPDATE e2e_device_keys SET key_json = ? WHERE user_id = ? AND device_id = ?",
                                 dump(keys), user_id, device_id)
            if master_sigs:
                raw = await tx.fetchval(
                    "SELECT key_json FROM e2e_cross_signing_keys WHERE user_id = ? AND key_type = 'master'", user_id)
                if raw is not None:
                    keys = load(raw)
                    keys.setdefault("signatures", {}).setdefault(user_id, {}).update(master_sigs)
                    await tx.execute("UPDATE e2e_cross_signing_keys SET key_json = ? WHERE user_id = ?"
                                     " AND key_type = 'master'", dump(keys), user_id)
            await tx.executemany(
                "INSERT INTO e2e_user_signatures (signer_id, target_id, key_id, signature) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (signer_id, target_id, key_id) DO UPDATE SET signature = excluded.signature",
                [(user_id, t, k, s) for t, k, s in user_sigs])
        return stream

    async def signatures_by(self, signer_id: str) -> dict[str, dict[str, str]]:
        """Every signature by `signer_id`'s user-signing key on others' master keys: target -> key ID -> sig."""
        found: dict[str, dict[str, str]] = {}
        for r in await self.db.fetchall(
                "SELECT target_id, key_id, signature FROM e2e_user_signatures WHERE signer_id = ?", signer_id):
            found.setdefault(r["target_id"], {})[r["key_id"]] = r["signature"]
        return found

    # --- device lists ---------------------------------------------------------------------

    async def record_change(self, user_ids: Sequence[str]) -> int:
        async with self.db.transaction() as tx:
            return await record_device_list_change(tx, user_ids)

    async def users_sharing_rooms(self, user_id: str) -> set[str]:
        """Everyone joined to or invited into a room the user is joined to (the user included)."""
        rows = await self.db.fetchall(
            "SELECT DISTINCT b.state_key AS user_id FROM current_state a JOIN current_state b"
            " ON b.room_id = a.room_id AND b.type = 'm.room.member' AND b.membership IN ('join', 'invite')"
            " WHERE a.type = 'm.room.member' AND a.state_key = ? AND a.membership = 'join'", user_id)
        return {r["user_id"] for r in rows} | {user_id}

    async def shared_with(self, user_id: str, candidates: Sequence[str]) -> set[str]:
        """Those of `candidates` who share a room with the user (joined or invited)."""
        found: set[str] = set()
        for chunk in _chunks(list(candidates)):
            rows = await self.db.fetchall(
                "SELECT DISTINCT b.state_key AS user_id FROM current_state a JOIN current_state b"
                " ON b.room_id = a.room_id AND b.type = 'm.room.member' AND b.membership IN ('join', 'invite')"
                " WHERE a.type = 'm.room.member' AND a.state_key = ? AND a.membership = 'join'"
                f" AND b.state_key IN ({_marks(len(chunk))})", user_id, *chunk)
            found |= {r["user_id"] for r in rows}
        return found

    async def changed_users(self, user_id: str, after: int, upto: int) -> set[str]:
        """Users whose devices changed in (after, upto] and who are the user or share a room with them."""
        rows = await self.db.fetchall(
            "SELECT DISTINCT c.user_id FROM device_list_changes c WHERE c.stream > ? AND c.stream <= ?"
            " AND (c.user_id = ? OR EXISTS (SELECT 1 FROM current_state a JOIN current_state b"
            " ON b.room_id = a.room_id WHERE a.type = 'm.room.member' AND a.state_key = ?"
            " AND a.membership = 'join' AND b.type = 'm.room.member' AND b.state_key = c.user_id"
            " AND b.membership IN ('join', 'invite')))", after, upto, user_id, user_id)
        return {r["user_id"] for r in rows}

    async def member_events_in(self, room_ids: Sequence[str], after: int, upto: int) -> list[tuple[str, str]]:
        """(room, user) of every membership event in (after, upto] in these rooms."""
        found: list[tuple[str, str]] = []
        for chunk in _chunks(list(room_ids)):
            rows = await self.db.fetchall(
                "SELECT DISTINCT room_id, state_key FROM events WHERE type = 'm.room.member'"
                f" AND room_id IN ({_marks(len(chunk))}) AND stream > ? AND stream <= ? AND rejected IS NULL",
                *chunk, after, upto)
            found += [(r["room_id"], r["state_key"]) for r in rows]
        return found

    async def last_change(self, user_id: str, before: int) -> int | None:
        """The user's device list change before position `before` (the prev_id of the next update)."""
        value = await self.db.fetchval(
            "SELECT MAX(stream) FROM device_list_changes WHERE user_id = ? AND stream < ?", user_id, before)
        return None if value is None else int(value)

    async def latest_change(self, user_id: str) -> int:
        value = await self.db.fetchval("SELECT MAX(stream) FROM device_list_changes WHERE user_id = ?", user_id)
        return int(value or 0)

    # --- remote device lists ------------------------------------------------------------------

    async def remote_list_state(self, user_id: str) -> tuple[int, bool] | None:
        row = await self.db.fetchone("SELECT stream_id, stale FROM remote_device_lists WHERE user_id = ?", user_id)
        return None if row is None else (int(row["stream_id"]), bool(row["stale"]))

    async def tracked_remote(self, user_ids: Sequence[str], local_server: str) -> set[str]:
        """Remote users whose device list we hold and can trust: not stale, and still in a room with
        one of our users (else their server no longer sends us updates)."""
        found: set[str] = set()
        for chunk in _chunks(list(user_ids)):
            rows = await self.db.fetchall(
                "SELECT r.user_id FROM remote_device_lists r WHERE r.stale = 0"
                f" AND r.user_id IN ({_marks(len(chunk))}) AND EXISTS (SELECT 1 FROM current_state a"
                " JOIN current_state b ON b.room_id = a.room_id AND b.type = 'm.room.member'"
                " AND b.membership = 'join' AND b.state_key LIKE ? WHERE a.type = 'm.room.member'"
                " AND a.state_key = r.user_id AND a.membership = 'join')", *chunk, f"%:{local_server}")
            found |= {r["user_id"] for r in rows}
        return found

    async def mark_remote_stale(self, user_id: str) -> None:
        await self.db.execute(
            "INSERT INTO remote_device_lists (user_id, stream_id, stale) VALUES (?, 0, 1)"
            " ON CONFLICT (user_id) DO UPDATE SET stale = 1", user_id)

    async def replace_remote_devices(self, user_id: str, stream_id: int,
                                     devices: Sequence[tuple[str, dict[str, Any] | None, str | None]],
                                     master: dict[str, Any] | None, self_signing: dict[str, Any] | None) -> int:
        """A remote user's whole device list as their server gave it; the change's stream position."""
        async with self.db.transaction() as tx:
            stream = await record_device_list_change(tx, [user_id])
            await tx.execute("DELETE FROM e2e_device_keys WHERE user_id = ?", user_id)
            await tx.executemany(
                "INSERT INTO e2e_device_keys (user_id, device_id, key_json, display_name) VALUES (?, ?, ?, ?)",
                [(user_id, d, None if k is None else dump(k), n) for d, k, n in devices])
            await tx.execute("DELETE FROM e2e_cross_signing_keys WHERE user_id = ?", user_id)
            for key_type, key in (("master", master), ("self_signing", self_signing)):
                if key is not None:
                    await tx.execute("INSERT INTO e2e_cross_signing_keys (user_id, key_type, key_json)"
                                     " VALUES (?, ?, ?)", user_id, key_type, dump(key))
            await tx.execute(
                "INSERT INTO remote_device_lists (user_id, stream_id, stale) VALUES (?, ?, 0)"
                " ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id, stale = 0",
                user_id, stream_id)
        return stream

    async def update_remote_device(self, user_id: str, device_id: str, stream_id: int, deleted: bool,
                                   keys: dict[str, Any] | None, display_name: str | None) -> int:
        """One m.device_list_update applied in order (its prev_id matched what we hold)."""
        async with self.db.transaction() as tx:
            stream = await record_device_list_change(tx, [user_id])
            if deleted:
                await tx.execute("DELETE FROM e2e_device_keys WHERE user_id = ? AND device_id = ?",
                                 user_id, device_id)
            else:
                await tx.execute(
                    "INSERT INTO e2e_device_keys (user_id, device_id, key_json, display_name) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json,"
                    " display_name = excluded.display_name",
                    user_id, device_id, None if keys is None else dump(keys), display_name)
            await tx.execute("UPDATE remote_device_lists SET stream_id = ? WHERE user_id = ?", stream_id, user_id)
        return stream

    async def set_remote_cross_signing(self, user_id: str, keys: dict[str, dict[str, Any]]) -> int:
        stream = await self.set_cross_signing_keys(user_id, keys)
        assert stream is not None
        return stream

    # --- to-device messages ---------------------------------------------------------------

    async def existing_devices(self, user_ids: Sequence[str]) -> dict[str, list[str]]:
        """The devices (logged-in sessions) of these local users."""
        found: dict[str, list[str]] = {}
        for chunk in _chunks(list(user_ids)):
            rows = await self.db.fetchall(
                f"SELECT user_id, device_id FROM devices WHERE user_id IN ({_marks(len(chunk))})", *chunk)
            for r in rows:
                found.setdefault(r["user_id"], []).append(r["device_id"])
        return found

    async def add_to_device(self, sender: str, event_type: str, messages: Sequence[tuple[str, str, Any]],
                            txn: tuple[str, str, str] | None, ts: int, max_pending: int,
                            forget_txns_before: int = 0) -> QueuedToDevice | None:
        """Queue the messages (user, device, content) at one new stream position; None if the txn was
        already used (the sender's txn IDs older than `forget_txns_before` are forgotten here). A device
        with `max_pending` messages waiting gets no more until it syncs."""
        async with self.db.transaction() as tx:
            if txn is not None:
                await tx.execute("DELETE FROM to_device_txns WHERE user_id = ? AND device_id = ? AND ts < ?",
                                 txn[0], txn[1], forget_txns_before)
                fresh = await tx.fetchval(
                    "INSERT INTO to_device_txns (user_id, device_id, txn_id, ts) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT DO NOTHING RETURNING 1", *txn, ts)
                if fresh is None:
                    return None
            stream = await next_stream(tx)
            # The full inboxes, counted once for the whole send (inside the write lock, so no
            # concurrent send can fill one in between).
            full: set[tuple[str, str]] = set()
            for chunk in _chunks(list(dict.fromkeys(u for u, _, _ in messages))):
                rows = await tx.fetchall(
                    f"SELECT user_id, device_id FROM to_device_inbox WHERE user_id IN ({_marks(len(chunk))})"
                    " GROUP BY user_id, device_id HAVING COUNT(*) >= ?", *chunk, max_pending)
                full.update((r["user_id"], r["device_id"]) for r in rows)
            kept = [(u, d, dump(c)) for u, d, c in messages if (u, d) not in full]
            if self.db.engine == "postgres":
                # One statement with the rows as arrays: executemany costs a round of the protocol per
                # row on PostgreSQL (4.4 ms for a 100-device key share, against about 1 ms here).
                await tx.execute(
                    "INSERT INTO to_device_inbox (user_id, device_id, stream, sender, type, content)"
                    " SELECT u, d, ?::bigint, ?::text, ?::text, c FROM unnest(?::text[], ?::text[], ?::text[])"
                    " AS m(u, d, c) ON CONFLICT DO NOTHING", stream, sender, event_type,
                    [u for u, _, _ in kept], [d for _, d, _ in kept], [c for _, _, c in kept])
            else:
                await tx.executemany(
                    "INSERT INTO to_device_inbox (user_id, device_id, stream, sender, type, content)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    [(u, d, stream, sender, event_type, c) for u, d, c in kept])
        return QueuedToDevice(stream, frozenset(full))

    async def to_device_for(self, user_id: str, device_id: str, after: int, upto: int,
                            limit: int) -> list[ToDeviceMessage]:
        rows = await self.db.fetchall(
            "SELECT stream, sender, type, content FROM to_device_inbox WHERE user_id = ? AND device_id = ?"
            " AND stream > ? AND stream <= ? ORDER BY stream LIMIT ?", user_id, device_id, after, upto, limit)
        return [ToDeviceMessage(int(r["stream"]), r["sender"], r["type"], load(r["content"])) for r in rows]

    async def delete_to_device(self, user_id: str, device_id: str, upto: int) -> None:
        await self.db.execute("DELETE FROM to_device_inbox WHERE user_id = ? AND device_id = ? AND stream <= ?",
                              user_id, device_id, upto)

    # --- room key backups -------------------------------------------------------------------

    async def create_backup(self, user_id: str, algorithm: str, auth_data: Any) -> int:
        async with self.db.transaction() as tx:
            top = await tx.fetchval("SELECT MAX(version) FROM room_key_backup_versions WHERE user_id = ?", user_id)
            version = int(top or 0) + 1
            await tx.execute("INSERT INTO room_key_backup_versions (user_id, version, algorithm, auth_data)"
                             " VALUES (?, ?, ?, ?)", user_id, version, algorithm, dump(auth_data))
        return version

    async def backup(self, user_id: str, version: int | None) -> BackupVersion | None:
        """A live backup version, or the newest one when `version` is None."""
        if version is None:
            row = await self.db.fetchone(
                "SELECT * FROM room_key_backup_versions WHERE user_id = ? AND deleted = 0"
                " ORDER BY version DESC LIMIT 1", user_id)
        else:
            row = await self.db.fetchone(
                "SELECT * FROM room_key_backup_versions WHERE user_id = ? AND version = ? AND deleted = 0",
                user_id, version)
        if row is None:
            return None
        return BackupVersion(int(row["version"]), row["algorithm"], load(row["auth_data"]), int(row["etag"]))

    async def update_backup(self, user_id: str, version: int, auth_data: Any) -> bool:
        row = await self.db.fetchone(
            "UPDATE room_key_backup_versions SET auth_data = ? WHERE user_id = ? AND version = ? AND deleted = 0"
            " RETURNING version", dump(auth_data), user_id, version)
        return row is not None

    async def delete_backup(self, user_id: str, version: int) -> bool:
        async with self.db.transaction() as tx:
            row = await tx.fetchone(
                "UPDATE room_key_backup_versions SET deleted = 1 WHERE user_id = ? AND version = ? AND deleted = 0"
                " RETURNING version", user_id, version)
            await tx.execute("DELETE FROM room_key_backup_keys WHERE user_id = ? AND version = ?", user_id, version)
        return row is not None

    async def backup_count(self, user_id: str, version: int) -> int:
        return int(await self.db.fetchval(
            "SELECT COUNT(*) FROM room_key_backup_keys WHERE user_id = ? AND version = ?", user_id, version))

    async def backed_up_keys(self, user_id: str, version: int, room_id: str | None = None,
                             session_id: str | None = None) -> list[BackedUpKey]:
        where, args = _backup_keys_where(user_id, version, room_id, session_id)
        rows = await self.db.fetchall("SELECT * FROM room_key_backup_keys WHERE " + where, *args)
        return [BackedUpKey(r["room_id"], r["session_id"], int(r["first_message_index"]), int(r["forwarded_count"]),
                            bool(r["is_verified"]), load(r["session_data"])) for r in rows]

    async def put_backed_up_keys(self, user_id: str, version: int, keys: Sequence[BackedUpKey],
                                 better: Any) -> tuple[int, int] | None:
        """Store each key unless the one held is better (`better(held, new)`); (etag, count), or None if
        the version is not (or no longer) the live one. One transaction: concurrent uploads each see
        what the other wrote."""
        async with self.db.transaction() as tx:
            etag = await tx.fetchval(
                "UPDATE room_key_backup_versions SET etag = etag + 1 WHERE user_id = ? AND version = ?"
                " AND deleted = 0 RETURNING etag", user_id, version)
            if etag is None:
                return None
            for key in keys:
                row = await tx.fetchone(
                    "SELECT * FROM room_key_backup_keys WHERE user_id = ? AND version = ? AND room_id = ?"
                    " AND session_id = ?", user_id, version, key.room_id, key.session_id)
                if row is not None:
                    held = BackedUpKey(row["room_id"], row["session_id"], int(row["first_message_index"]),
                                       int(row["forwarded_count"]), bool(row["is_verified"]),
                                       load(row["session_data"]))
                    if better(held, key):
                        continue
                await tx.execute(
                    "INSERT INTO room_key_backup_keys (user_id, version, room_id, session_id, first_message_index,"
                    " forwarded_count, is_verified, session_data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET"
                    " first_message_index = excluded.first_message_index,"
                    " forwarded_count = excluded.forwarded_count, is_verified = excluded.is_verified,"
                    " session_data = excluded.session_data",
                    user_id, version, key.room_id, key.session_id, key.first_message_index, key.forwarded_count,
                    int(key.is_verified), dump(key.session_data))
            count = await tx.fetchval("SELECT COUNT(*) FROM room_key_backup_keys WHERE user_id = ? AND version = ?",
                                      user_id, version)
        return int(etag), int(count)

    async def delete_backed_up_keys(self, user_id: str, version: int, room_id: str | None,
                                    session_id: str | None) -> tuple[int, int] | None:
        async with self.db.transaction() as tx:
            etag = await tx.fetchval(
                "UPDATE room_key_backup_versions SET etag = etag + 1 WHERE user_id = ? AND version = ?"
                " AND deleted = 0 RETURNING etag", user_id, version)
            if etag is None:
                return None
            where, args = _backup_keys_where(user_id, version, room_id, session_id)
            await tx.execute("DELETE FROM room_key_backup_keys WHERE " + where, *args)
            count = await tx.fetchval("SELECT COUNT(*) FROM room_key_backup_keys WHERE user_id = ? AND version = ?",
                                      user_id, version)
        return int(etag), int(count)


def _backup_keys_where(user_id: str, version: int, room_id: str | None,
                       session_id: str | None) -> tuple[str, list[Any]]:
    """The WHERE clause picking a backup's keys: all of them, a room's, or one session's."""
    where, args = "user_id = ? AND version = ?", [user_id, version]
    if room_id is not None:
        where += " AND room_id = ?"
        args.append(room_id)
    if session_id is not None:
        where += " AND session_id = ?"
        args.append(session_id)
    return where, args
