"""Registration tokens (invite-only sign-up): the tokens, and the uses in progress that count as pending."""

from __future__ import annotations

from typing import Any

from storage.database import Database, Row

# Every read of a token carries its pending uses: those not completed whose session is still alive.
_SELECT = ("SELECT t.token, t.uses_allowed, t.completed, t.expiry_time,"
           " (SELECT COUNT(*) FROM registration_token_uses u WHERE u.token = t.token AND u.expires_ts > ?)"
           " AS pending FROM registration_tokens t")
_USABLE = ("(t.expiry_time IS NULL OR t.expiry_time > ?) AND (t.uses_allowed IS NULL OR t.completed +"
           " (SELECT COUNT(*) FROM registration_token_uses u WHERE u.token = t.token AND u.expires_ts > ?)"
           " < t.uses_allowed)")


class RegistrationTokenStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, token: str, uses_allowed: int | None, expiry_time: int | None, ts: int) -> bool:
        """False if the token exists already."""
        row = await self.db.fetchone(
            "INSERT INTO registration_tokens (token, uses_allowed, expiry_time, created_ts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING RETURNING token", token, uses_allowed, expiry_time, ts)
        return row is not None

    async def get(self, token: str, now: int) -> Row | None:
        return await self.db.fetchone(_SELECT + " WHERE t.token = ?", now, token)

    async def all(self, now: int, valid: bool | None) -> list[Row]:
        if valid is None:
            return await self.db.fetchall(_SELECT + " ORDER BY t.created_ts, t.token", now)
        condition = _USABLE if valid else f"NOT ({_USABLE})"
        return await self.db.fetchall(_SELECT + f" WHERE {condition} ORDER BY t.created_ts, t.token",
                                      now, now, now)

    async def update(self, token: str, changes: dict[str, Any]) -> bool:
        """Set `uses_allowed` and/or `expiry_time` (None: unlimited); False if there is no such token."""
        columns = [c for c in ("uses_allowed", "expiry_time") if c in changes]
        if not columns:
            return await self.db.fetchval("SELECT 1 FROM registration_tokens WHERE token = ?", token) is not None
        sets = ", ".join(f"{c} = ?" for c in columns)
        row = await self.db.fetchone(f"UPDATE registration_tokens SET {sets} WHERE token = ? RETURNING token",
                                     *(changes[c] for c in columns), token)
        return row is not None

    async def delete(self, token: str) -> bool:
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM registration_token_uses WHERE token = ?", token)
            row = await tx.fetchone("DELETE FROM registration_tokens WHERE token = ? RETURNING token", token)
        return row is not None

    async def usable(self, token: str, now: int) -> bool:
        return await self.db.fetchval(f"SELECT 1 FROM registration_tokens t WHERE t.token = ? AND {_USABLE}",
                                      token, now, now) is not None

    async def begin_use(self, token: str, use_id: str, now: int, expires_ts: int) -> bool:
        """Count a use as pending if the token is still usable; False if not (unknown, used up, expired)."""
        async with self.db.transaction() as tx:
            # Lock the token's row first so that two sign-ups cannot both take its last use.
            locked = await tx.fetchone("UPDATE registration_tokens SET token = token WHERE token = ? RETURNING token",
                                       token)
            if locked is None:
                return False
            if await tx.fetchval(f"SELECT 1 FROM registration_tokens t WHERE t.token = ? AND {_USABLE}",
                                 token, now, now) is None:
                return False
            await tx.execute("INSERT INTO registration_token_uses (use_id, token, expires_ts) VALUES (?, ?, ?)",
                             use_id, token, expires_ts)
        return True

    async def complete_use(self, use_id: str, token: str) -> None:
        """A pending use became a registration."""
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM registration_token_uses WHERE use_id = ?", use_id)
            await tx.execute("UPDATE registration_tokens SET completed = completed + 1 WHERE token = ?", token)

    async def drop_expired_uses(self, now: int) -> None:
        await self.db.execute("DELETE FROM registration_token_uses WHERE expires_ts <= ?", now)
