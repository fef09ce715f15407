"""The federation outbox (per destination, persisted), retry state, and inbound transaction IDs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from storage.database import Database


@dataclass(frozen=True)
class QueuedItem:
    id: int
    kind: str  # "pdu" or "edu"
    body: dict[str, Any]


@dataclass(frozen=True)
class DestinationState:
    destination: str
    retry_interval_ms: int
    retry_at_ts: int


class FederationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def enqueue(self, destinations: list[str], kind: str, body: dict[str, Any], ts: int) -> None:
        raw = json.dumps(body, separators=(",", ":"))
        await self.db.executemany(
            "INSERT INTO federation_outbox (destination, kind, body, created_ts) VALUES (?, ?, ?, ?)",
            [(d, kind, raw, ts) for d in destinations])

    async def pending(self, destination: str, kind: str, limit: int) -> list[QueuedItem]:
        rows = await self.db.fetchall(
            "SELECT id, kind, body FROM federation_outbox WHERE destination = ? AND kind = ? ORDER BY id LIMIT ?",
            destination, kind, limit)
        return [QueuedItem(r["id"], r["kind"], json.loads(r["body"])) for r in rows]

    async def destinations_with_pending(self) -> list[str]:
        rows = await self.db.fetchall("SELECT DISTINCT destination FROM federation_outbox")
        return [r["destination"] for r in rows]

    async def remove(self, ids: list[int]) -> None:
        if not ids:
            return
        async with self.db.transaction() as tx:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                await tx.execute(f"DELETE FROM federation_outbox WHERE id IN ({','.join('?' * len(chunk))})", *chunk)

    async def destination(self, destination: str) -> DestinationState:
        row = await self.db.fetchone("SELECT * FROM federation_destinations WHERE destination = ?", destination)
        if row is None:
            return DestinationState(destination, 0, 0)
        return DestinationState(destination, row["retry_interval_ms"], row["retry_at_ts"])

    async def set_retry(self, destination: str, interval_ms: int, retry_at_ts: int, success_ts: int | None) -> None:
        await self.db.execute(
            "INSERT INTO federation_destinations (destination, retry_interval_ms, retry_at_ts, last_success_ts)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (destination) DO UPDATE SET"
            " retry_interval_ms = excluded.retry_interval_ms, retry_at_ts = excluded.retry_at_ts,"
            " last_success_ts = COALESCE(excluded.last_success_ts, federation_destinations.last_success_ts)",
            destination, interval_ms, retry_at_ts, success_ts)

    async def inbound_txn(self, origin: str, txn_id: str) -> dict[str, Any] | None:
        raw = await self.db.fetchval(
            "SELECT response FROM federation_inbound_txns WHERE origin = ? AND txn_id = ?", origin, txn_id)
        return None if raw is None else json.loads(raw)

    async def record_inbound_txn(self, origin: str, txn_id: str, response: dict[str, Any], ts: int) -> None:
        await self.db.execute(
            "INSERT INTO federation_inbound_txns (origin, txn_id, response, ts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING", origin, txn_id, json.dumps(response), ts)
