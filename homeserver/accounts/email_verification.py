"""Proving control of an email address: a mail with a link and a 6-digit code.

Used by registration (m.login.email.identity), Whispr sign-up, and password
reset. Tokens and codes are stored hashed; a code dies after 5 wrong tries.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from typing import Any
from urllib.parse import urlencode

import pyotp

from homeserver.clock import now_ms
from homeserver.errors import MatrixError, bad_json, invalid_param
from homeserver.events.ids import normalise_email
from homeserver.accounts.mailer import Mailer
from homeserver.accounts.models import EmailValidation
from homeserver.accounts.tokens import digest
from storage.store import Store

log = logging.getLogger("whispr.email")

PURPOSES = ("register", "reset", "signup")
TOKEN_TTL_MS = 24 * 3600 * 1000
MAX_CODE_ATTEMPTS = 5
_CLIENT_SECRET = re.compile(r"^[0-9a-zA-Z.=_\-]{1,255}$")
VALIDATE_PATH = "/_matrix/client/unstable/org.whispr/email/validate"
SUBMIT_PATH = "/_matrix/client/unstable/org.whispr/email/submit_token"


def check_client_secret(client_secret: object) -> str:
    if not isinstance(client_secret, str) or not _CLIENT_SECRET.match(client_secret):
        raise invalid_param("client_secret must match [0-9a-zA-Z.=_-]{1,255}")
    return client_secret


def new_code() -> str:
    """A 6-digit one-time code from pyotp's HOTP over a fresh random secret."""
    return pyotp.HOTP(pyotp.random_base32()).at(0)


async def release_stale_claim(store: Store, address: str, ttl_s: int) -> None:
    """Free an address claimed at sign-up but not verified within `ttl_s`, so that one unverified
    account cannot hold somebody else's address for good."""
    loser = await store.threepids.release_unverified("email", address, now_ms() - ttl_s * 1000)
    if loser is not None:
        log.info("%s never verified %s within %d s: the address is free again", loser, address, ttl_s)


class EmailVerifier:
    def __init__(self, store: Store, mailer: Mailer, public_baseurl: str, unverified_ttl_s: int = 86_400) -> None:
        self._store = store
        self._mailer = mailer
        self._baseurl = public_baseurl.rstrip("/")
        self._unverified_ttl_s = unverified_ttl_s

    @property
    def submit_url(self) -> str:
        return self._baseurl + SUBMIT_PATH

    async def request_token(self, email: object, client_secret: object, send_attempt: object,
                            purpose: str, for_user: str | None = None) -> str:
        """Mail a link and a code for this address; return the validation session ID.

        `for_user`: Whispr sign-up re-sends for the account's own unverified address.
        """
        address = normalise_email(email)
        secret = check_client_secret(client_secret)
        if isinstance(send_attempt, bool) or not isinstance(send_attempt, int):
            raise bad_json("send_attempt must be an integer")
        if purpose in ("register", "signup", "add"):
            await release_stale_claim(self._store, address, self._unverified_ttl_s)
        existing = await self._store.threepids.get("email", address)
        own_unverified = (existing is not None and existing.user_id == for_user
                          and existing.validated_ts is None and purpose == "signup")
        if purpose in ("register", "signup", "add") and existing is not None and not own_unverified:
            raise MatrixError(400, "M_THREEPID_IN_USE", "This email address is already registered")
        if purpose == "reset" and (existing is None or existing.validated_ts is None):
            raise MatrixError(400, "M_THREEPID_NOT_FOUND", "No account has this verified email address")
        previous = await self._store.email_validations.latest(address, secret, purpose)
        # The spec: a repeated send_attempt must not send another mail.
        if previous is not None and previous.send_attempt >= send_attempt and previous.expires_ts > now_ms():
            return previous.sid
        sid = secrets.token_urlsafe(18)
        token = secrets.token_urlsafe(24)
        code = new_code()
        ts = now_ms()
        await self._store.email_validations.create(EmailValidation(
            sid, secret, address, purpose, digest(token), digest(sid + ":" + code), send_attempt, 0,
            ts, ts + TOKEN_TTL_MS, None, False))
        link = self._baseurl + VALIDATE_PATH + "?" + urlencode({"sid": sid, "client_secret": secret, "token": token})
        await self._mailer.send(address, _SUBJECTS[purpose], _BODY.format(code=code, link=link))
        return sid

    async def submit(self, sid: object, client_secret: object, token: object) -> EmailValidation:
        """Validate with either the link's token or the 6-digit code."""
        if not isinstance(sid, str) or not isinstance(token, str):
            raise bad_json("sid and token must be strings")
        secret = check_client_secret(client_secret)
        v = await self._store.email_validations.get(sid)
        if v is None or not hmac.compare_digest(v.client_secret, secret):
            raise MatrixError(400, "M_NO_VALID_SESSION", "Unknown validation session")
        if v.validated_ts is not None:
            return v
        if v.expires_ts <= now_ms():
            raise MatrixError(400, "M_NO_VALID_SESSION", "This validation session has expired")
        # Take a try before comparing, atomically in the database, so that concurrent
        # guesses cannot get past MAX_CODE_ATTEMPTS.
        attempts = await self._store.email_validations.count_attempt(sid)
        if attempts > MAX_CODE_ATTEMPTS:
            raise MatrixError(400, "M_NO_VALID_SESSION", "Too many wrong codes; request a new mail")
        if not (hmac.compare_digest(digest(token), v.token_hash)
                or hmac.compare_digest(digest(sid + ":" + token), v.code_hash)):
            left = MAX_CODE_ATTEMPTS - attempts
            raise MatrixError(400, "M_INVALID_PARAM" if left > 0 else "M_NO_VALID_SESSION",
                              f"Wrong code ({max(left, 0)} tries left)")
        await self._store.email_validations.mark_validated(sid, now_ms())
        if v.purpose == "signup":
            await self._store.threepids.mark_validated("email", v.email, now_ms())
        return await self._store.email_validations.get(sid) or v

    async def consume(self, creds: object, purpose: str) -> str:
        """Check UIA `threepid_creds` for a validated, unused session; use it up; return the address."""
        if not isinstance(creds, dict):
            raise MatrixError(401, "M_UNAUTHORIZED", "threepid_creds is required")
        sid, secret = creds.get("sid"), creds.get("client_secret")
        v = await self._store.email_validations.get(sid) if isinstance(sid, str) else None
        if v is None or not isinstance(secret, str) or not hmac.compare_digest(v.client_secret, secret) \
                or v.purpose != purpose:
            raise MatrixError(401, "M_UNAUTHORIZED", "Unknown email validation session")
        if v.validated_ts is None:
            raise MatrixError(401, "M_UNAUTHORIZED", "The email address has not been validated yet")
        if not await self._store.email_validations.consume(v.sid):
            raise MatrixError(401, "M_UNAUTHORIZED", "This email validation has already been used")
        return v.email

    async def status(self, sid: str) -> dict[str, Any]:
        v = await self._store.email_validations.get(sid)
        return {} if v is None else {"email": v.email, "validated": v.validated_ts is not None}


_SUBJECTS = {
    "register": "Verify your email address for Whispr",
    "signup": "Verify your email address for Whispr",
    "reset": "Reset your Whispr password",
    "add": "Confirm the email address for your Whispr account",
}

_BODY = """Hello,

Your Whispr verification code is: {code}

Or open this link to confirm it is you:
{link}

If you did not ask for this, ignore this mail.
"""
