"""Media repository metadata: local uploads (incl. pending async ones) and cached remote media."""

from __future__ import annotations

from storage.database import Connection, Database, Row
from homeserver.accounts.models import MediaRecord


# An item is quarantined by its own flag or by its bytes (quarantined_media_hashes): the
# second holds every copy of the same content, uploaded or fetched before or after.
_QUARANTINED = ("(m.quarantined = 1 OR EXISTS (SELECT 1 FROM quarantined_media_hashes q"
                " WHERE q.sha256 = m.sha256)) AS is_quarantined")
_SELECT_LOCAL = f"SELECT m.*, {_QUARANTINED} FROM local_media m"
_SELECT_REMOTE = f"SELECT m.*, {_QUARANTINED} FROM remote_media m"
_SETTING_FREEZE = "unauthenticated_freeze_ts"


def _local(origin: str, row: Row) -> MediaRecord:
    return MediaRecord(origin, row["media_id"], row["content_type"], row["upload_name"], row["size"],
                       row["sha256"], row["created_ts"], bool(row["is_quarantined"]), user_id=row["user_id"],
                       unused_expires_ts=row["unused_expires_ts"])


def _remote(row: Row) -> MediaRecord:
    return MediaRecord(row["origin"], row["media_id"], row["content_type"], row["upload_name"], row["size"],
                       row["sha256"], row["fetched_ts"], bool(row["is_quarantined"]),
                       last_access_ts=row["last_access_ts"])


class MediaStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- local --

    async def insert_local(self, media_id: str, user_id: str, content_type: str, upload_name: str | None,
                           size: int, sha256: str, created_ts: int) -> None:
        await self.db.execute(
            "INSERT INTO local_media (media_id, user_id, content_type, upload_name, size, sha256, created_ts)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            media_id, user_id, content_type, upload_name, size, sha256, created_ts)

    async def create_pending(self, media_id: str, user_id: str, created_ts: int, expires_ts: int) -> None:
        await self.db.execute(
            "INSERT INTO local_media (media_id, user_id, created_ts, unused_expires_ts) VALUES (?, ?, ?, ?)",
            media_id, user_id, created_ts, expires_ts)

    async def count_pending(self, user_id: str, now_ts: int) -> int:
        return int(await self.db.fetchval(
            "SELECT COUNT(*) FROM local_media WHERE user_id = ? AND sha256 IS NULL AND unused_expires_ts > ?",
            user_id, now_ts) or 0)

    async def complete_pending(self, media_id: str, content_type: str, upload_name: str | None,
                               size: int, sha256: str) -> bool:
        """Fill in a pending upload; False if it was completed meanwhile (no overwrite)."""
        row = await self.db.fetchone(
            "UPDATE local_media SET content_type = ?, upload_name = ?, size = ?, sha256 = ?,"
            " unused_expires_ts = NULL WHERE media_id = ? AND sha256 IS NULL RETURNING media_id",
            content_type, upload_name, size, sha256, media_id)
        return row is not None

    async def get_local(self, origin: str, media_id: str) -> MediaRecord | None:
        row = await self.db.fetchone(f"{_SELECT_LOCAL} WHERE m.media_id = ?", media_id)
        return None if row is None else _local(origin, row)

    async def delete_expired_pending(self, now_ts: int) -> int:
        rows = await self.db.fetchall(
            "DELETE FROM local_media WHERE sha256 IS NULL AND unused_expires_ts <= ? RETURNING media_id", now_ts)
        return len(rows)

    # -- remote --

    async def get_remote(self, origin: str, media_id: str) -> MediaRecord | None:
        row = await self.db.fetchone(f"{_SELECT_REMOTE} WHERE m.origin = ? AND m.media_id = ?",
                                     origin, media_id)
        return None if row is None else _remote(row)

    async def upsert_remote(self, record: MediaRecord) -> None:
        await self.db.execute(
            "INSERT INTO remote_media (origin, media_id, content_type, upload_name, size, sha256, fetched_ts,"
            " last_access_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (origin, media_id) DO UPDATE SET"
            " content_type = excluded.content_type, upload_name = excluded.upload_name, size = excluded.size,"
            " sha256 = excluded.sha256, fetched_ts = excluded.fetched_ts, last_access_ts = excluded.last_access_ts",
            record.origin, record.media_id, record.content_type, record.upload_name, record.size,
            record.sha256, record.created_ts, record.last_access_ts or record.created_ts)

    async def touch_remote(self, origin: str, media_id: str, ts: int) -> None:
        await self.db.execute("UPDATE remote_media SET last_access_ts = ? WHERE origin = ? AND media_id = ?",
                              ts, origin, media_id)

    async def unused_remote(self, before_ts: int, limit: int = 500) -> list[MediaRecord]:
        rows = await self.db.fetchall(
            f"{_SELECT_REMOTE} WHERE m.last_access_ts < ? ORDER BY m.last_access_ts LIMIT ?",
            before_ts, limit)
        return [_remote(r) for r in rows]

    # -- both --

    async def quarantine(self, record: MediaRecord, local: bool, ts: int) -> int:
        """Quarantine the item and its bytes; returns how many other items hold the same bytes."""
        async with self.db.transaction() as tx:
            if local:
                await tx.execute("UPDATE local_media SET quarantined = 1 WHERE media_id = ?", record.media_id)
            else:
                await tx.execute("UPDATE remote_media SET quarantined = 1 WHERE origin = ? AND media_id = ?",
                                 record.origin, record.media_id)
            if record.sha256 is None:  # a pending upload: no bytes yet
                return 0
            await tx.execute("INSERT INTO quarantined_media_hashes (sha256, quarantined_ts) VALUES (?, ?)"
                             " ON CONFLICT (sha256) DO NOTHING", record.sha256, ts)
            return await self._others_with(tx, record.sha256)

    async def release(self, record: MediaRecord, local: bool) -> int:
        """Lift the quarantine of the item and of its bytes (so of every item holding them);
        returns how many other items hold the same bytes."""
        async with self.db.transaction() as tx:
            if local:
                await tx.execute("UPDATE local_media SET quarantined = 0 WHERE media_id = ?", record.media_id)
            else:
                await tx.execute("UPDATE remote_media SET quarantined = 0 WHERE origin = ? AND media_id = ?",
                                 record.origin, record.media_id)
            if record.sha256 is None:
                return 0
            await tx.execute("DELETE FROM quarantined_media_hashes WHERE sha256 = ?", record.sha256)
            await tx.execute("UPDATE local_media SET quarantined = 0 WHERE sha256 = ?", record.sha256)
            await tx.execute("UPDATE remote_media SET quarantined = 0 WHERE sha256 = ?", record.sha256)
            return await self._others_with(tx, record.sha256)

    @staticmethod
    async def _others_with(conn: Connection, sha256: str) -> int:
        count = await conn.fetchval(
            "SELECT (SELECT COUNT(*) FROM local_media WHERE sha256 = ?)"
            " + (SELECT COUNT(*) FROM remote_media WHERE sha256 = ?)", sha256, sha256)
        return max(0, int(count or 0) - 1)

    async def unauthenticated_freeze_ts(self, now_ts: int) -> int:
        """The recorded start of the unauthenticated-media freeze, recording `now_ts` if there is
        none yet (the first start with the freeze on; several workers agree on one)."""
        await self.db.execute("INSERT INTO media_settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                              _SETTING_FREEZE, now_ts)
        return int(await self.db.fetchval("SELECT value FROM media_settings WHERE name = ?", _SETTING_FREEZE))

    async def delete(self, record: MediaRecord, local: bool) -> None:
        if local:
            await self.db.execute("DELETE FROM local_media WHERE media_id = ?", record.media_id)
        else:
            await self.db.execute("DELETE FROM remote_media WHERE origin = ? AND media_id = ?",
                                  record.origin, record.media_id)

    async def sha256_in_use(self, sha256: str) -> bool:
        """Whether any item, local or remote, still names this file."""
        return await self.db.fetchval(
            "SELECT 1 WHERE EXISTS (SELECT 1 FROM local_media WHERE sha256 = ?)"
            " OR EXISTS (SELECT 1 FROM remote_media WHERE sha256 = ?)", sha256, sha256) is not None
