"""Other servers' signing keys, as fetched from them: the cache behind federation.keys.KeyRing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Row


@dataclass(frozen=True)
class ServerKey:
    server_name: str
    key_id: str
    # Unpadded base64 of the ed25519 public key.
    verify_key: str
    # Until when signatures by this key are accepted: the document's valid_until_ts (capped),
    # or for an old key its expired_ts.
    valid_until_ts: int
    # Set for keys published under old_verify_keys.
    expired_ts: int | None
    fetched_ts: int
    # The whole signed key document the key came from, as the server published it.
    key_json: dict[str, Any]


def _key(row: Row) -> ServerKey:
    return ServerKey(row["server_name"], row["key_id"], row["verify_key"], row["valid_until_ts"],
                     row["expired_ts"], row["fetched_ts"], json.loads(row["key_json"]))


class ServerKeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def store(self, keys: list[ServerKey]) -> None:
        """Insert or replace keys (all from one fetched document, usually) in one transaction."""
        if not keys:
            return
        async with self.db.transaction() as tx:
            await tx.executemany(
                "INSERT INTO server_keys (server_name, key_id, verify_key, valid_until_ts, expired_ts, fetched_ts,"
                " key_json) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (server_name, key_id) DO UPDATE SET"
                " verify_key = excluded.verify_key, valid_until_ts = excluded.valid_until_ts,"
                " expired_ts = excluded.expired_ts, fetched_ts = excluded.fetched_ts, key_json = excluded.key_json",
                [(k.server_name, k.key_id, k.verify_key, k.valid_until_ts, k.expired_ts, k.fetched_ts,
                  json.dumps(k.key_json, separators=(",", ":"))) for k in keys])

    async def get(self, server_name: str, key_id: str) -> ServerKey | None:
        row = await self.db.fetchone("SELECT * FROM server_keys WHERE server_name = ? AND key_id = ?",
                                     server_name, key_id)
        return None if row is None else _key(row)

    async def for_server(self, server_name: str) -> list[ServerKey]:
        """Every cached key of the server, most recently fetched first."""
        rows = await self.db.fetchall(
            "SELECT * FROM server_keys WHERE server_name = ? ORDER BY fetched_ts DESC, key_id", server_name)
        return [_key(r) for r in rows]
