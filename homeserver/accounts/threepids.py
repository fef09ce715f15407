"""An account's third-party identifiers (POST /account/3pid/add, /delete): email addresses only.

An address is added once its owner proved it (a validation session of purpose "add", used up by
the addition) and nobody else holds it. No identity server is ever told: binding is not
supported, so deletions answer `id_server_unbind_result: no-support`.
"""

from __future__ import annotations

from homeserver.accounts.email_verification import EmailVerifier
from homeserver.accounts.models import Threepid
from homeserver.clock import now_ms
from homeserver.errors import MatrixError
from homeserver.events.ids import normalise_email
from storage.store import Store


class Threepids:
    def __init__(self, store: Store, emails: EmailVerifier) -> None:
        self._store = store
        self._emails = emails

    async def add_email(self, user_id: str, sid: object, client_secret: object) -> None:
        try:
            address = await self._emails.consume({"sid": sid, "client_secret": client_secret}, "add")
        except MatrixError as e:
            raise MatrixError(400, "M_THREEPID_AUTH_FAILED", e.error) from None
        existing = await self._store.threepids.get("email", address)
        if existing is not None and existing.user_id != user_id:
            raise MatrixError(400, "M_THREEPID_IN_USE", "This email address is already in use")
        if existing is None:
            ts = now_ms()
            if not await self._store.threepids.add(Threepid("email", address, user_id, ts, ts)):
                raise MatrixError(400, "M_THREEPID_IN_USE", "This email address is already in use")
        elif existing.validated_ts is None:
            await self._store.threepids.mark_validated("email", address, now_ms())

    async def delete(self, user_id: str, medium: object, address: object) -> None:
        if medium not in ("email", "msisdn"):
            raise MatrixError(400, "M_INVALID_PARAM", "medium must be email or msisdn")
        if not isinstance(address, str):
            raise MatrixError(400, "M_BAD_JSON", "address must be a string")
        if medium == "email":
            address = normalise_email(address)
        await self._store.threepids.delete_one(user_id, str(medium), address)
