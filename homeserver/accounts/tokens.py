"""Access tokens (JWT, HS256) and opaque refresh tokens.

A JWT alone cannot be revoked, so each carries the device's current token ID
(`jti`); the device table holds the ID that is live, and logout or a password
change replaces or deletes it.
"""

from __future__ import annotations

import hashlib
import secrets
import sys
import time
from dataclasses import dataclass

# PyJWT imports cryptography, when it is installed, for RSA and EC keys; Whispr signs with
# HS256 only. cryptography (installed for development TLS certificates) costs a process about
# 9 MiB of memory, so it is hidden while PyJWT loads; importing it later works as usual.
_HIDE_CRYPTOGRAPHY = "cryptography" not in sys.modules
if _HIDE_CRYPTOGRAPHY:
    sys.modules["cryptography"] = None  # type: ignore[assignment]
try:
    import jwt
finally:
    if _HIDE_CRYPTOGRAPHY:
        del sys.modules["cryptography"]

from homeserver.errors import unknown_token  # noqa: E402

VERIFIED_CACHE_SIZE = 50_000


@dataclass(frozen=True)
class TokenClaims:
    user_id: str
    device_id: str
    token_id: str
    expires_ts: int | None
    is_guest: bool = False


class TokenCodec:
    def __init__(self, secret: str, issuer: str) -> None:
        self._secret = secret
        self._issuer = issuer
        self._verified: dict[str, TokenClaims] = {}

    def issue(self, user_id: str, device_id: str, token_id: str, issued_ts: int, expires_ts: int | None,
              is_guest: bool = False) -> str:
        claims: dict[str, object] = {"iss": self._issuer, "sub": user_id, "dev": device_id,
                                     "jti": token_id, "iat": issued_ts // 1000}
        if expires_ts is not None:
            claims["exp"] = expires_ts // 1000
        if is_guest:  # a guest's token says so: the guest check costs no lookup per request
            claims["gst"] = True
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def decode(self, token: str) -> TokenClaims:
        """Verify a token; a verified token's claims are remembered (decoding is ~a third of a send)."""
        claims = self._verified.get(token)
        if claims is not None:
            if claims.expires_ts is not None and claims.expires_ts <= time.time() * 1000:
                raise unknown_token("Access token has expired", soft_logout=True)
            return claims
        claims = self._decode(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))
        self._verified[token] = claims
        return claims

    def _decode(self, token: str) -> TokenClaims:
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], issuer=self._issuer,
                                options={"require": ["sub", "dev", "jti"]})
        except jwt.ExpiredSignatureError:
            raise unknown_token("Access token has expired", soft_logout=True) from None
        except jwt.PyJWTError:
            raise unknown_token() from None
        exp = claims.get("exp")
        return TokenClaims(str(claims["sub"]), str(claims["dev"]), str(claims["jti"]),
                           int(exp) * 1000 if exp is not None else None, claims.get("gst") is True)


def new_token_id() -> str:
    return secrets.token_urlsafe(12)


def new_refresh_token() -> str:
    return "wrt_" + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """What we store instead of a bearer secret."""
    return hashlib.sha256(secret.encode()).hexdigest()
