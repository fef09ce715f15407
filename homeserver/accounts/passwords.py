"""argon2id password hashing (libsodium through pynacl), run off the event loop."""

from __future__ import annotations

import asyncio
import secrets
from concurrent.futures import Executor

import nacl.exceptions
import nacl.pwhash

from homeserver.config import PasswordsConfig
from homeserver.errors import MatrixError

MAX_PASSWORD_BYTES = 512


class PasswordHasher:
    def __init__(self, config: PasswordsConfig, executor: Executor | None = None) -> None:
        self._config = config
        self._executor = executor
        self._opslimit = max(config.argon2_opslimit, nacl.pwhash.argon2id.OPSLIMIT_MIN)
        self._memlimit = max(config.argon2_memlimit_kib * 1024, nacl.pwhash.argon2id.MEMLIMIT_MIN)
        self._dummy_hash: bytes | None = None

    def check_strength(self, password: object) -> str:
        if not isinstance(password, str):
            raise MatrixError(400, "M_BAD_JSON", "password must be a string")
        if len(password.encode()) > MAX_PASSWORD_BYTES:
            raise MatrixError(400, "M_BAD_JSON", f"password is longer than {MAX_PASSWORD_BYTES} bytes")
        if len(password) < self._config.min_length:
            raise MatrixError(400, "M_WEAK_PASSWORD",
                              f"password must be at least {self._config.min_length} characters")
        return password

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        hashed: bytes = await loop.run_in_executor(
            self._executor, nacl.pwhash.argon2id.str, password.encode(), self._opslimit, self._memlimit)
        return hashed.decode()

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Check a password. Without a hash (no such account) a dummy one of the same cost is
        checked instead, so that an unknown account answers as slowly as a wrong password."""
        if not isinstance(password, str) or len(password.encode()) > MAX_PASSWORD_BYTES:
            return False
        if not password_hash:
            await self._check(await self._dummy(), password)
            return False
        return await self._check(password_hash.encode(), password)

    async def _check(self, password_hash: bytes, password: str) -> bool:
        loop = asyncio.get_running_loop()
        try:
            return bool(await loop.run_in_executor(
                self._executor, nacl.pwhash.verify, password_hash, password.encode()))
        except nacl.exceptions.InvalidkeyError:
            return False

    async def _dummy(self) -> bytes:
        """A hash of a random password with the configured cost, made on first use."""
        if self._dummy_hash is None:
            loop = asyncio.get_running_loop()
            self._dummy_hash = await loop.run_in_executor(
                self._executor, nacl.pwhash.argon2id.str, secrets.token_bytes(32), self._opslimit, self._memlimit)
        return self._dummy_hash
