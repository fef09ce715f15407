"""matrix-nio with its encryption (python-olm) against the real server process: an encrypted
direct chat both ways, a second device that decrypts what is sent after it came, and a deleted
device that the other side stops encrypting to."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import nio
import pytest

from tests.test_nio_client import PASSWORD, backend_env, http_register, server_url  # noqa: F401 (fixtures)

pytest.importorskip("olm")

ENCRYPTION = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


class Person:
    """A nio client with encryption on, and the plaintexts it decrypted."""

    def __init__(self, base_url: str, user_id: str, store: Path) -> None:
        store.mkdir(parents=True, exist_ok=True)
        config = nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
        self.client = nio.AsyncClient(base_url, user_id, store_path=str(store), config=config)
        self.plain: list[str] = []
        self.undecrypted = 0
        self.client.add_event_callback(self._on_text, nio.RoomMessageText)
        self.client.add_event_callback(self._on_megolm, nio.MegolmEvent)

    async def _on_text(self, room: Any, event: nio.RoomMessageText) -> None:
        if event.decrypted:
            self.plain.append(event.body)

    async def _on_megolm(self, room: Any, event: nio.MegolmEvent) -> None:
        self.undecrypted += 1

    @property
    def device_id(self) -> str:
        return str(self.client.device_id)

    async def login(self) -> None:
        resp = await self.client.login(PASSWORD, device_name="nio")
        assert isinstance(resp, nio.LoginResponse), resp
        if self.client.should_upload_keys:
            assert isinstance(await self.client.keys_upload(), nio.KeysUploadResponse)

    async def step(self) -> None:
        """One round of what nio's sync_forever does: sync, then upload/query/claim keys, send to-devices."""
        resp = await self.client.sync(timeout=300, full_state=False)
        assert isinstance(resp, nio.SyncResponse), resp
        if self.client.should_upload_keys:
            assert isinstance(await self.client.keys_upload(), nio.KeysUploadResponse)
        if self.client.should_query_keys:
            assert isinstance(await self.client.keys_query(), nio.KeysQueryResponse)
        if self.client.should_claim_keys:
            users = self.client.get_users_for_key_claiming()
            assert isinstance(await self.client.keys_claim(users), nio.KeysClaimResponse)
        await self.client.send_to_device_messages()

    async def send(self, room_id: str, text: str) -> None:
        resp = await self.client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": text},
                                           ignore_unverified_devices=True)
        assert isinstance(resp, nio.RoomSendResponse), resp

    async def close(self) -> None:
        await self.client.close()


async def until(people: list[Person], done: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out waiting"
        for p in people:
            await p.step()


async def test_encrypted_chat_second_device_and_deleted_device(server_url: str, tmp_path: Path) -> None:  # noqa: F811
    alice_id = (await http_register(server_url, "alice"))["user_id"]
    bob_id = (await http_register(server_url, "bob"))["user_id"]
    alice = Person(server_url, alice_id, tmp_path / "alice")
    bob = Person(server_url, bob_id, tmp_path / "bob")
    bob2: Person | None = None
    try:
        await alice.login()
        await bob.login()
        created = await alice.client.room_create(invite=[bob_id], is_direct=True, initial_state=[ENCRYPTION])
        assert isinstance(created, nio.RoomCreateResponse), created
        room = created.room_id
        await until([bob], lambda: room in bob.client.invited_rooms)
        assert isinstance(await bob.client.join(room), nio.JoinResponse)
        await until([alice, bob], lambda: room in alice.client.rooms and bob_id in alice.client.rooms[room].users
                    and room in bob.client.rooms and bob.client.rooms[room].encrypted)

        await alice.send(room, "hello bob")
        await until([alice, bob], lambda: "hello bob" in bob.plain)
        await bob.send(room, "hello alice")
        await until([alice, bob], lambda: "hello alice" in alice.plain)

        # a second device of bob: alice hears of it, and it decrypts what is sent after it came
        bob2 = Person(server_url, bob_id, tmp_path / "bob2")
        await bob2.login()
        await until([alice, bob, bob2], lambda: bob2.device_id in alice.client.device_store[bob_id])
        await alice.send(room, "for both of bob's devices")
        await until([alice, bob, bob2], lambda: "for both of bob's devices" in bob2.plain
                    and "for both of bob's devices" in bob.plain)
        assert bob2.undecrypted <= 2  # what was sent before it came stays unreadable to it

        # bob deletes that device: alice's client stops encrypting to it
        gone = bob2.device_id
        first = await bob.client.delete_devices([gone])
        assert isinstance(first, nio.DeleteDevicesAuthResponse)
        auth = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": bob_id},
                "password": PASSWORD, "session": first.session}
        assert isinstance(await bob.client.delete_devices([gone], auth), nio.DeleteDevicesResponse)
        await until([alice, bob], lambda: gone not in {d.id for d in
                                                        alice.client.device_store.active_user_devices(bob_id)})
        await alice.send(room, "after the deletion")
        await until([alice, bob], lambda: "after the deletion" in bob.plain)
        session = alice.client.olm.outbound_group_sessions[room]
        assert (bob_id, gone) not in session.users_shared_with
        assert (bob_id, bob.device_id) in session.users_shared_with
    finally:
        for p in (alice, bob, bob2):
            if p is not None:
                await p.close()
        await asyncio.sleep(0)


async def encrypted_story(owner_url: str, guest_url: str, tmp: Path, tag: str) -> None:
    """Two nio users, each on the given server: the owner's encrypted room, messages both ways."""
    owner_id = (await http_register(owner_url, f"owner{tag}"))["user_id"]
    guest_id = (await http_register(guest_url, f"guest{tag}"))["user_id"]
    owner = Person(owner_url, owner_id, tmp / f"owner{tag}")
    guest = Person(guest_url, guest_id, tmp / f"guest{tag}")
    try:
        await owner.login()
        await guest.login()
        created = await owner.client.room_create(invite=[guest_id], is_direct=True, initial_state=[ENCRYPTION])
        assert isinstance(created, nio.RoomCreateResponse), created
        room = created.room_id
        await until([guest], lambda: room in guest.client.invited_rooms, timeout=60)
        assert isinstance(await guest.client.join(room), nio.JoinResponse)
        await until([owner, guest], lambda: room in owner.client.rooms and guest_id in owner.client.rooms[room].users
                    and room in guest.client.rooms and guest.client.rooms[room].encrypted, timeout=60)
        await owner.send(room, f"to the guest {tag}")
        await until([owner, guest], lambda: f"to the guest {tag}" in guest.plain, timeout=60)
        await guest.send(room, f"to the owner {tag}")
        await until([owner, guest], lambda: f"to the owner {tag}" in owner.plain, timeout=60)
    finally:
        await owner.close()
        await guest.close()
