"""Matrix errors raised by the domain and serialised by the HTTP layer."""

from __future__ import annotations

from typing import Any


class MatrixError(Exception):
    """An error the client sees as ``{"errcode": ..., "error": ...}`` with an HTTP status."""

    def __init__(self, status: int, errcode: str, error: str, **extra: Any) -> None:
        super().__init__(f"{errcode}: {error}")
        self.status = status
        self.errcode = errcode
        self.error = error
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        return {"errcode": self.errcode, "error": self.error, **self.extra}


def bad_json(error: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", error)


def missing_param(error: str) -> MatrixError:
    return MatrixError(400, "M_MISSING_PARAM", error)


def invalid_param(error: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", error)


def forbidden(error: str) -> MatrixError:
    return MatrixError(403, "M_FORBIDDEN", error)


def not_found(error: str) -> MatrixError:
    return MatrixError(404, "M_NOT_FOUND", error)


def limit_exceeded(retry_after_ms: int) -> MatrixError:
    return MatrixError(429, "M_LIMIT_EXCEEDED", "Too many requests", retry_after_ms=retry_after_ms)


def user_locked() -> MatrixError:
    return MatrixError(401, "M_USER_LOCKED", "This account has been locked", soft_logout=True)


def user_suspended() -> MatrixError:
    return MatrixError(403, "M_USER_SUSPENDED", "You cannot perform this action while suspended.")


def unknown_token(error: str = "Unrecognised access token", soft_logout: bool = False) -> MatrixError:
    return MatrixError(401, "M_UNKNOWN_TOKEN", error, soft_logout=soft_logout)


class UIARequired(Exception):
    """User-interactive auth must continue: the client gets 401 with the flow state."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__("user-interactive auth required")
        self.body = body
