"""The storage layer on both engines: migrations, round trips, atomic updates."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from homeserver.accounts.models import Device, RefreshToken, Threepid, User
from homeserver.config import ConfigError, load_config
from storage import Store, open_database
from storage.database import ConstraintViolation, DatabaseError
from storage.migrations import LATEST_VERSION, MIGRATIONS, Migration, current_version, run_migrations


@pytest.fixture
async def store(db_args: dict[str, Any]) -> AsyncIterator[Store]:
    s = Store(await open_database(**db_args))
    yield s
    await s.close()


async def test_migrations_bring_schema_to_latest_and_are_idempotent(db_args: dict[str, Any]) -> None:
    db = await open_database(**db_args)
    try:
        assert await current_version(db) == LATEST_VERSION
        assert await run_migrations(db) == LATEST_VERSION
    finally:
        await db.close()
    db = await open_database(**db_args)  # reopening migrates nothing and keeps working
    await db.close()


async def test_database_newer_than_code_is_refused(db_args: dict[str, Any]) -> None:
    db = await open_database(**db_args)
    await db.execute("INSERT INTO schema_version (version) VALUES (?)", LATEST_VERSION + 1)
    await db.close()
    with pytest.raises(DatabaseError, match="newer"):
        await open_database(**db_args)


async def test_failed_migration_rolls_back_whole(db_args: dict[str, Any]) -> None:
    db = await open_database(**db_args)
    try:
        broken = MIGRATIONS + (Migration(LATEST_VERSION + 1, "broken", (
            "CREATE TABLE half_done (x INTEGER)", "THIS IS NOT SQL")),)
        with pytest.raises(Exception):  # noqa: B017 (each engine raises its own error type)
            await run_migrations(db, broken)
        assert await current_version(db) == LATEST_VERSION
        # The first statement of the failed migration left nothing behind.
        await db.execute("CREATE TABLE half_done (x INTEGER)")
    finally:
        await db.close()


async def test_user_round_trip_and_duplicate(store: Store) -> None:
    user = User("@a:hs", "a", "hash", 1000)
    assert await store.users.create(user)
    assert not await store.users.create(User("@a:hs", "a", "other", 2000))
    got = await store.users.get("@a:hs")
    assert got == user
    profile = await store.profiles.get("@a:hs")
    assert profile is not None and profile.displayname == "a"
    await store.users.set_totp("@a:hs", "SECRET", True)
    got = await store.users.get("@a:hs")
    assert got is not None and got.totp_secret == "SECRET" and got.totp_enabled


async def test_devices_and_refresh_tokens(store: Store) -> None:
    await store.users.create(User("@a:hs", "a", None, 1))
    await store.devices.upsert(Device("@a:hs", "D1", "phone", "t1", None, 10))
    await store.devices.upsert(Device("@a:hs", "D2", None, "t2", 99, 11))
    await store.devices.upsert(Device("@a:hs", "D1", None, "t3", None, 12))  # re-login keeps the name
    d1 = await store.devices.get("@a:hs", "D1")
    assert d1 is not None and d1.token_id == "t3" and d1.display_name == "phone"
    await store.refresh_tokens.add(RefreshToken("h1", "@a:hs", "D1", 1, 2, False))
    assert await store.refresh_tokens.spend("h1")
    assert not await store.refresh_tokens.spend("h1")
    assert await store.devices.delete_all("@a:hs", except_device="D2") == ["D1"]
    assert [d.device_id for d in await store.devices.list("@a:hs")] == ["D2"]
    assert await store.refresh_tokens.get("h1") is None


async def test_concurrent_spend_of_one_refresh_token_succeeds_once(store: Store) -> None:
    await store.users.create(User("@a:hs", "a", None, 1))
    await store.refresh_tokens.add(RefreshToken("h", "@a:hs", "D", 1, 2, False))
    results = await asyncio.gather(*(store.refresh_tokens.spend("h") for _ in range(10)))
    assert results.count(True) == 1


async def test_threepids_unique_across_users(store: Store) -> None:
    await store.users.create(User("@a:hs", "a", None, 1))
    await store.users.create(User("@b:hs", "b", None, 1))
    assert await store.threepids.add(Threepid("email", "x@y.z", "@a:hs", None, 1))
    assert not await store.threepids.add(Threepid("email", "x@y.z", "@b:hs", 5, 1))
    await store.threepids.mark_validated("email", "x@y.z", 7)
    t = await store.threepids.get("email", "x@y.z")
    assert t is not None and t.user_id == "@a:hs" and t.validated_ts == 7


async def test_profile_fields_and_transaction_rollback(store: Store) -> None:
    await store.users.create(User("@a:hs", "a", None, 1))
    await store.profiles.set_field("@a:hs", "org.whispr.bio", "hello")
    with pytest.raises(RuntimeError):
        async with store.db.transaction() as tx:
            await tx.execute("UPDATE profiles SET displayname = ? WHERE user_id = ?", "lost", "@a:hs")
            raise RuntimeError("abort")
    profile = await store.profiles.get("@a:hs")
    assert profile is not None and profile.fields == {"org.whispr.bio": "hello"} and profile.displayname == "a"


async def test_fetchval_and_commit_and_constraint_violations(store: Store) -> None:
    """A transaction may end with a read that commits; a broken unique constraint surfaces as
    ConstraintViolation on either engine and keeps nothing of its transaction."""
    await store.users.create(User("@a:hs", "a", None, 1))
    async with store.db.transaction() as tx:
        await tx.execute("UPDATE profiles SET displayname = ? WHERE user_id = ?", "kept", "@a:hs")
        assert await tx.fetchval_and_commit("SELECT displayname FROM profiles WHERE user_id = ?", "@a:hs") == "kept"
    assert (await store.profiles.get("@a:hs")).displayname == "kept"  # type: ignore[union-attr]
    with pytest.raises(ConstraintViolation):
        async with store.db.transaction() as tx:
            await tx.execute("UPDATE profiles SET displayname = ? WHERE user_id = ?", "lost", "@a:hs")
            await tx.execute("INSERT INTO users (user_id, localpart, created_ts) VALUES (?, ?, ?)", "@a:hs", "a", 2)
            await tx.fetchval_and_commit("SELECT 1")
    assert (await store.profiles.get("@a:hs")).displayname == "kept"  # type: ignore[union-attr]
    with pytest.raises(ConstraintViolation):
        await store.db.execute("INSERT INTO users (user_id, localpart, created_ts) VALUES (?, ?, ?)", "@a:hs", "a", 3)


async def test_sqlite_uses_wal(tmp_path: Path) -> None:
    db = await open_database("sqlite", path=str(tmp_path / "w.db"))
    try:
        assert (await db.fetchval("PRAGMA journal_mode")).lower() == "wal"
    finally:
        await db.close()


async def test_items_quarantined_before_the_content_quarantine_bring_their_content(db_args: dict[str, Any]) -> None:
    """The migration that adds quarantine by content marks the bytes of items quarantined before it."""
    hashes = next(m for m in MIGRATIONS if m.description == "media: quarantined content hashes")
    db = await open_database(**db_args, migrate=False)
    try:
        await run_migrations(db, tuple(m for m in MIGRATIONS if m.version < hashes.version))
        for media_id, sha, quarantined in (("a", "aaa", 1), ("b", "aaa", 0), ("c", "ccc", 0)):
            await db.execute("INSERT INTO local_media (media_id, user_id, sha256, created_ts, quarantined)"
                             " VALUES (?, '@u:x', ?, 0, ?)", media_id, sha, quarantined)
        await db.execute("INSERT INTO remote_media (origin, media_id, content_type, size, sha256, fetched_ts,"
                         " last_access_ts, quarantined) VALUES ('o', 'r', 't', 1, 'rrr', 0, 0, 1)")
        await run_migrations(db)
        store = Store(db)
        assert [(await store.media.get_local("x", m)).quarantined for m in "abc"] == [True, True, False]  # type: ignore[union-attr]
        assert (await store.media.get_remote("o", "r")).quarantined  # type: ignore[union-attr]
    finally:
        await db.close()


async def test_sqlite_syncs_every_commit_unless_configured(tmp_path: Path) -> None:
    """synchronous=FULL (2) by default, on the writer and every reader; NORMAL (1) when asked."""
    for mode, expected in ((None, 2), ("NORMAL", 1), ("FULL", 2)):
        config = load_config(None, environ={}, overrides={
            "data_dir": str(tmp_path / f"d-{mode}"), **({"database": {"sqlite_synchronous": mode}} if mode else {})})
        db = await open_database("sqlite", path=str(config.sqlite_path()),
                                 sqlite_synchronous=config.database.sqlite_synchronous)
        try:
            async with db.transaction() as tx:
                assert await tx.fetchval("PRAGMA synchronous") == expected
            assert {await db.fetchval("PRAGMA synchronous") for _ in range(6)} == {expected}
        finally:
            await db.close()
    with pytest.raises(ConfigError):
        load_config(None, environ={}, overrides={"database": {"sqlite_synchronous": "OFF"}})
