"""Media as a server admin sees it: quarantine (by content, as the command line's), deletion, a user's uploads."""

from __future__ import annotations

from typing import Any

from homeserver.admin.users import page_bounds
from homeserver.errors import MatrixError, invalid_param, not_found
from media.ids import check_media_ref
from media.repository import MediaRepository
from storage.admin import MEDIA_ORDER
from storage.store import Store


class AdminMedia:
    def __init__(self, server_name: str, repository: MediaRepository, store: Store) -> None:
        self._server_name = server_name
        self._repository = repository
        self._store = store

    async def set_quarantined(self, server_name: str, media_id: str, quarantined: bool) -> None:
        check_media_ref(server_name, media_id)
        if await self._repository.set_quarantined(f"mxc://{server_name}/{media_id}", quarantined) is None:
            raise not_found("Unknown media")

    async def delete(self, server_name: str, media_id: str) -> dict[str, Any]:
        check_media_ref(server_name, media_id)
        if server_name != self._server_name:
            raise MatrixError(400, "M_UNKNOWN", "Can only delete local media")
        if not await self._repository.delete(f"mxc://{server_name}/{media_id}"):
            raise not_found("Unknown media")
        return {"deleted_media": [media_id], "total": 1}

    async def user_media(self, user_id: str, *, offset: int, limit: int, order_by: str,
                         backwards: bool) -> dict[str, Any]:
        if order_by not in MEDIA_ORDER:
            raise invalid_param(f"order_by must be one of {', '.join(MEDIA_ORDER)}")
        offset, limit = page_bounds(offset, limit)
        rows, total = await self._store.admin.user_media(user_id, order_by=order_by, backwards=backwards,
                                                         offset=offset, limit=limit)
        media = [{
            "media_id": r["media_id"], "media_type": r["content_type"], "media_length": r["size"],
            "upload_name": r["upload_name"], "created_ts": r["created_ts"], "last_access_ts": r["created_ts"],
            "quarantined_by": "admin" if r["is_quarantined"] else None, "safe_from_quarantine": False,
        } for r in rows]
        body: dict[str, Any] = {"media": media, "total": total}
        if offset + len(media) < total:
            body["next_token"] = offset + len(media)
        return body
