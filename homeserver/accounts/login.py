"""Login: the password check, then Whispr's extra steps before any token is issued.

Steps after a good password, in order: a 6-digit code mailed to the account's
verified address (`org.whispr.login.email_otp`, when the config or the user
asks for it), then a TOTP code (`org.whispr.login.totp`, when enrolled). While a
step is pending, the client gets 401 ``ORG.WHISPR.LOGIN_CHALLENGE`` with a
session to answer it with.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from typing import Any

from homeserver.accounts.accounts import Accounts, Session, check_device_params
from homeserver.clock import now_ms
from homeserver.config import LoginConfig
from homeserver.accounts.email_verification import new_code
from homeserver.accounts.login_tokens import LOGIN_TOKEN, LoginTokens
from homeserver.ephemeral import Ephemeral
from homeserver.errors import MatrixError, bad_json, forbidden, limit_exceeded
from homeserver.accounts.mailer import Mailer
from homeserver.accounts.models import User
from homeserver.ratelimit import RateLimiter
from homeserver.accounts.tokens import digest
from homeserver.accounts.totp import Totp
from storage.store import Store

log = logging.getLogger("whispr.login")

LOGIN_PASSWORD = "m.login.password"
LOGIN_EMAIL_OTP = "org.whispr.login.email_otp"
LOGIN_TOTP = "org.whispr.login.totp"
STEP_TYPES = {"email_otp": LOGIN_EMAIL_OTP, "totp": LOGIN_TOTP}


class LoginService:
    def __init__(self, config: LoginConfig, accounts: Accounts, store: Store, ephemeral: Ephemeral,
                 mailer: Mailer, totp: Totp, limiter: RateLimiter) -> None:
        self._config = config
        self._accounts = accounts
        self._store = store
        self._ephemeral = ephemeral
        self._mailer = mailer
        self._totp = totp
        self._limiter = limiter
        self.tokens = LoginTokens(config, ephemeral)

    def flows(self) -> list[dict[str, Any]]:
        types = []
        if self._config.email_otp != "required":
            types.append(LOGIN_PASSWORD)
        if self._config.email_otp != "off":
            types.append(LOGIN_EMAIL_OTP)
        types.append(LOGIN_TOTP)
        flows: list[dict[str, Any]] = [{"type": t} for t in types]
        if self.tokens.enabled:
            flows.append({"type": LOGIN_TOKEN, "get_login_token": True})
        return flows

    async def login(self, body: dict[str, Any], ip: str) -> Session:
        kind = body.get("type")
        if kind == LOGIN_TOTP or (kind == LOGIN_EMAIL_OTP and "session" in body):
            return await self._answer(body, ip)
        if kind == LOGIN_TOKEN and self.tokens.enabled:
            return await self._token_login(body, ip)
        if kind == LOGIN_EMAIL_OTP and self._config.email_otp == "off":
            raise MatrixError(400, "M_UNKNOWN", "Email one-time codes are not enabled on this server")
        if kind not in (LOGIN_PASSWORD, LOGIN_EMAIL_OTP):
            raise MatrixError(400, "M_UNKNOWN", f"Unknown login type {kind!r}")
        device_id, display_name = check_device_params(body.get("device_id"), body.get("initial_device_display_name"))
        want_refresh = body.get("refresh_token") is True

        await self._limiter.check("login", ip)
        user = await self.check_password(body, ip)
        steps = self._steps(user, forced_email=kind == LOGIN_EMAIL_OTP)
        if not steps:
            return await self._accounts.create_session(user.user_id, device_id, display_name, want_refresh)
        state: dict[str, Any] = {"user_id": user.user_id, "device_id": device_id, "display_name": display_name,
                                 "refresh": want_refresh, "steps": steps, "completed": []}
        session_id = secrets.token_urlsafe(18)
        if steps[0] == "email_otp":
            await self._mail_code(user, state)
        await self._save(session_id, state)
        raise self._challenge(session_id, state)

    async def _token_login(self, body: dict[str, Any], ip: str) -> Session:
        """m.login.token: the token stands for a session that passed every step already."""
        device_id, display_name = check_device_params(body.get("device_id"), body.get("initial_device_display_name"))
        await self._limiter.check("login", ip)
        user = await self._accounts.get_user(await self.tokens.redeem(body.get("token")))
        if user is None or user.deactivated:
            raise forbidden("Invalid login token")
        return await self._accounts.create_session(user.user_id, device_id, display_name,
                                                   body.get("refresh_token") is True)

    async def check_password(self, body: dict[str, Any], ip: str) -> User:
        """The password check of /login and of UIA, under the failed-attempt limits per address and
        per account (429 once either is used up, right password or not). Both are taken before the
        check, so concurrent guesses cannot overrun them, and given back unless the password was
        wrong: only failures count."""
        password = body.get("password")
        if not isinstance(password, str):
            raise bad_json("password must be a string")
        target = await self._accounts.resolve_identifier(body)
        taken: list[tuple[str, str]] = []
        wrong = False
        try:
            for action, key in (("login_failed", ip), ("login_failed_account", target.key)):
                await self._limiter.check(action, key)
                taken.append((action, key))
            try:
                return await self._accounts.verify_login(target, password)
            except MatrixError as e:
                wrong = e.errcode == "M_FORBIDDEN"
                raise
        finally:
            if not wrong:
                for action, key in taken:
                    await self._limiter.give_back(action, key)

    def _steps(self, user: User, forced_email: bool) -> list[str]:
        steps = []
        mode = self._config.email_otp
        if mode == "required" or (mode == "optional" and (forced_email or user.email_otp_enabled)):
            steps.append("email_otp")
        if user.totp_enabled:
            steps.append("totp")
        return steps

    async def resend(self, session_id: object, ip: str) -> int:
        """Mail a new code for a pending login; at most once per resend interval."""
        state = await self._load(session_id)
        if state["steps"][0] != "email_otp":
            raise MatrixError(400, "M_BAD_JSON", "This login is not waiting for an email code")
        wait_ms = state["sent_ms"] + self._config.otp_resend_interval_s * 1000 - now_ms()
        if wait_ms > 0:
            raise limit_exceeded(wait_ms)
        await self._limiter.check("otp", ip)
        user = await self._accounts.get_user(state["user_id"])
        if user is None:
            raise forbidden("Unknown or expired login session")
        await self._mail_code(user, state)
        await self._save(str(session_id), state)
        return self._config.otp_ttl_s * 1000

    async def _answer(self, body: dict[str, Any], ip: str) -> Session:
        await self._limiter.check("otp", ip)
        session_id = body.get("session")
        state = await self._load(session_id)
        step = state["steps"][0]
        if body.get("type") != STEP_TYPES[step]:
            raise MatrixError(400, "M_BAD_JSON", f"This login is waiting for {STEP_TYPES[step]}")
        code = body.get("code")
        if not isinstance(code, str):
            raise bad_json("code must be a string")
        # Each answer takes a try before the code is checked, atomically: concurrent answers
        # must not share one try (a brute-force bypass of otp_max_attempts).
        step_key = f"{session_id}:{len(state['completed'])}"
        tries = await self._ephemeral.incr(f"login_tries:{step_key}", self._config.otp_ttl_s)
        if tries > self._config.otp_max_attempts:
            await self._ephemeral.delete(f"login:{session_id}")
            raise forbidden("Too many wrong codes: log in again to get a new one")
        ok = self._check_mailed_code(state, code) if step == "email_otp" else \
            await self._totp.verify(state["user_id"], code)
        if not ok:
            left = self._config.otp_max_attempts - tries
            if left <= 0:
                await self._ephemeral.delete(f"login:{session_id}")
                log.warning("login of %s: too many wrong codes", state["user_id"])
                raise forbidden("Too many wrong codes: log in again to get a new one")
            raise MatrixError(403, "M_FORBIDDEN", f"Wrong code ({left} tries left)", tries_left=left)
        # A right code completes its step once, even when sent twice at the same time.
        if await self._ephemeral.incr(f"login_done:{step_key}", self._config.otp_ttl_s) > 1:
            raise forbidden("Unknown or expired login session")
        state["completed"].append(STEP_TYPES[state["steps"].pop(0)])
        if state["steps"]:
            await self._save(str(session_id), state)
            raise self._challenge(str(session_id), state)
        await self._ephemeral.delete(f"login:{session_id}")
        return await self._accounts.create_session(state["user_id"], state["device_id"], state["display_name"],
                                                   state["refresh"])

    def _check_mailed_code(self, state: dict[str, Any], code: str) -> bool:
        if now_ms() > state["code_expires_ms"]:
            raise forbidden("This code has expired: ask for a new one")
        return hmac.compare_digest(digest(state["code_salt"] + code.strip()), state["code_hash"])

    async def _mail_code(self, user: User, state: dict[str, Any]) -> None:
        emails = [t.address for t in await self._accounts.emails(user.user_id) if t.validated_ts is not None]
        if not emails:
            raise forbidden("A one-time code is required, but this account has no verified email address")
        code = new_code()
        state["code_salt"] = secrets.token_hex(8)
        state["code_hash"] = digest(state["code_salt"] + code)
        state["sent_ms"] = now_ms()
        state["code_expires_ms"] = state["sent_ms"] + self._config.otp_ttl_s * 1000
        await self._mailer.send(emails[0], "Your Whispr login code",
                                f"Your Whispr login code is: {code}\n\nIt expires in "
                                f"{self._config.otp_ttl_s // 60} minutes. If you did not try to log in, "
                                "change your password.\n")

    async def _load(self, session_id: object) -> dict[str, Any]:
        if not isinstance(session_id, str):
            raise bad_json("session must be a string")
        state = await self._ephemeral.get(f"login:{session_id}")
        if state is None:
            raise forbidden("Unknown or expired login session")
        return state

    async def _save(self, session_id: str, state: dict[str, Any]) -> None:
        await self._ephemeral.put(f"login:{session_id}", state, self._config.otp_ttl_s)

    def _challenge(self, session_id: str, state: dict[str, Any]) -> MatrixError:
        step = state["steps"][0]
        what = "a code was mailed to you" if step == "email_otp" else "enter the code from your authenticator app"
        return MatrixError(401, "ORG.WHISPR.LOGIN_CHALLENGE", f"One more step to log in: {what}",
                           session=session_id, next=STEP_TYPES[step], completed=state["completed"],
                           expires_in_ms=self._config.otp_ttl_s * 1000)
