"""OpenID tokens: their SHA-256 only, with the user they name and when they expire."""

from __future__ import annotations

from storage.database import Database


class OpenIdStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, token_hash: str, user_id: str, expires_ts: int, now: int) -> None:
        """Store a new token; the user's expired ones go at the same time (no sweeper needed)."""
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM openid_tokens WHERE user_id = ? AND expires_ts <= ?", user_id, now)
            await tx.execute("INSERT INTO openid_tokens (token_hash, user_id, expires_ts) VALUES (?, ?, ?)",
                             token_hash, user_id, expires_ts)

    async def user_for(self, token_hash: str, now: int) -> str | None:
        """The user a live token names, or None."""
        value = await self.db.fetchval(
            "SELECT user_id FROM openid_tokens WHERE token_hash = ? AND expires_ts > ?", token_hash, now)
        return None if value is None else str(value)

    async def delete_for_user(self, user_id: str) -> None:
        await self.db.execute("DELETE FROM openid_tokens WHERE user_id = ?", user_id)
