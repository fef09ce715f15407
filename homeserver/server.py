"""The HomeServer object: every domain service, built from a Config, owned by the app."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from homeserver.accounts import Accounts
from homeserver.config import Config, ensure_secrets
from homeserver.email_verification import EmailVerifier
from homeserver.ephemeral import Ephemeral, make_ephemeral
from homeserver.login import LoginService
from homeserver.mailer import Mailer
from homeserver.passwords import PasswordHasher
from homeserver.profiles import Profiles
from homeserver.ratelimit import RateLimiter
from homeserver.totp import Totp
from homeserver.uia import InteractiveAuth
from storage import Store, open_database

log = logging.getLogger("whispr")


@dataclass
class HomeServer:
    config: Config
    store: Store
    ephemeral: Ephemeral
    limiter: RateLimiter
    mailer: Mailer
    accounts: Accounts
    uia: InteractiveAuth
    emails: EmailVerifier
    login: LoginService
    totp: Totp
    profiles: Profiles
    executor: ThreadPoolExecutor

    @classmethod
    async def start(cls, config: Config) -> "HomeServer":
        ensure_secrets(config)
        db = await open_database(
            config.database.engine, path=str(config.sqlite_path()), url=config.database.url,
            pool_min=config.database.pool_min, pool_max=config.database.pool_max)
        store = Store(db)
        ephemeral = make_ephemeral(config.redis.url, prefix=config.redis.key_prefix or f"whispr:{config.server_name}:")
        # Password hashing is CPU-bound: a small pool keeps it off the event loop.
        executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="whispr-cpu")
        limiter = RateLimiter(config.rate_limits, ephemeral)
        mailer = Mailer(config.mail)
        accounts = Accounts(config, store, PasswordHasher(config.passwords, executor))
        totp = Totp(store, ephemeral)
        hs = cls(
            config=config, store=store, ephemeral=ephemeral, limiter=limiter, mailer=mailer,
            accounts=accounts, uia=InteractiveAuth(ephemeral),
            emails=EmailVerifier(store, mailer, config.public_baseurl),
            login=LoginService(config.login, accounts, store, ephemeral, mailer, totp, limiter),
            totp=totp, profiles=Profiles(store, config.server_name), executor=executor)
        log.info("homeserver %s started (database: %s, redis: %s)", config.server_name,
                 config.database.engine, "yes" if config.redis.url else "no")
        return hs

    async def close(self) -> None:
        await self.ephemeral.close()
        await self.store.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
