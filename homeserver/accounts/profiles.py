"""Profiles: display name, avatar, and Whispr's bio as a namespaced custom field."""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from typing import Any, Protocol

from homeserver.errors import MatrixError, bad_json, forbidden, not_found
from homeserver.events.ids import parse_user_id
from storage.store import Store

BIO_FIELD = "org.whispr.bio"
MAX_DISPLAYNAME = 256
MAX_BIO = 1024
MAX_CUSTOM_FIELD_BYTES = 4096
_MXC = re.compile(r"^mxc://[A-Za-z0-9.\-:\[\]]+/[A-Za-z0-9_\-]+$")
# Custom field names: Java-package-style namespaces, as the spec asks.
_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
# Other servers' profiles are kept this long, so a client rendering a room asks each peer once.
REMOTE_PROFILE_TTL_S = 60.0
REMOTE_PROFILE_CACHE_SIZE = 10_000


class ProfileListener(Protocol):
    """Told when a user's display name or avatar changed (membership sends it into their rooms)."""

    def profile_changed(self, user_id: str) -> None: ...


class RemoteProfiles(Protocol):
    """Profiles of users on other servers (federation's /query/profile); raises MatrixError."""

    async def query_profile(self, user_id: str) -> dict[str, Any]: ...


class Profiles:
    def __init__(self, store: Store, server_name: str, listener: ProfileListener | None = None) -> None:
        self._store = store
        self._server_name = server_name
        self._listener = listener
        self.remote: RemoteProfiles | None = None
        self._remote_cache: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    async def get(self, user_id: str) -> dict[str, Any]:
        _, server = parse_user_id(user_id)
        if server != self._server_name:
            return await self._remote_profile(user_id)
        profile = await self._store.profiles.get(user_id)
        if profile is None:
            raise not_found("Profile not found")
        body: dict[str, Any] = dict(profile.fields)
        if profile.displayname is not None:
            body["displayname"] = profile.displayname
        if profile.avatar_url is not None:
            body["avatar_url"] = profile.avatar_url
        return body

    async def _remote_profile(self, user_id: str) -> dict[str, Any]:
        cached = self._remote_cache.get(user_id)
        if cached is not None and cached[0] > time.monotonic():
            return dict(cached[1])
        if self.remote is None:
            raise not_found("Profile not found")
        body = await self.remote.query_profile(user_id)
        self._remote_cache.pop(user_id, None)
        self._remote_cache[user_id] = (time.monotonic() + REMOTE_PROFILE_TTL_S, body)
        if len(self._remote_cache) > REMOTE_PROFILE_CACHE_SIZE:
            self._remote_cache.popitem(last=False)
        return dict(body)

    async def get_field(self, user_id: str, key: str) -> dict[str, Any]:
        body = await self.get(user_id)
        if key not in body:
            raise not_found(f"Profile has no {key}")
        return {key: body[key]}

    async def set_field(self, requester_id: str, user_id: str, key: str, value: Any) -> None:
        if requester_id != user_id:
            raise forbidden("You cannot change another user's profile")
        if key == "displayname":
            if value is not None and (not isinstance(value, str) or len(value) > MAX_DISPLAYNAME):
                raise bad_json(f"displayname must be a string of at most {MAX_DISPLAYNAME} characters")
            await self._store.profiles.set_displayname(user_id, value)
            self._changed(user_id)
        elif key == "avatar_url":
            if value is not None and (not isinstance(value, str) or not _MXC.match(value)):
                raise bad_json("avatar_url must be an mxc:// URI")
            await self._store.profiles.set_avatar_url(user_id, value)
            self._changed(user_id)
        elif key == BIO_FIELD:
            if value is not None and (not isinstance(value, str) or len(value) > MAX_BIO):
                raise bad_json(f"{BIO_FIELD} must be a string of at most {MAX_BIO} characters")
            await self._store.profiles.set_field(user_id, key, value)
        else:
            if len(key) > 255 or not _FIELD_NAME.match(key):
                raise MatrixError(400, "M_INVALID_PARAM", "custom profile fields need a namespaced name")
            if len(json.dumps(value)) > MAX_CUSTOM_FIELD_BYTES:
                raise MatrixError(400, "M_PROFILE_TOO_LARGE", "this profile field is too large")
            await self._store.profiles.set_field(user_id, key, value)

    def _changed(self, user_id: str) -> None:
        if self._listener is not None:
            self._listener.profile_changed(user_id)
