"""Assembly of the aiohttp application: middlewares, routes, the HomeServer's lifetime."""

from __future__ import annotations

from typing import AsyncIterator

from aiohttp import web

from client_api import (account, admin, devices, directory, friends, health, keys, login, media, notifications,
                        presence, profile, push_rules, pushers, register, relations, reports, room_keys, rooms,
                        search, spaces, sync, thirdparty, to_device, user_data, versions, wellknown, whispr)
from homeserver.web.requests import HS
from homeserver.web.error_middleware import matrix_errors
from homeserver.config import Config
from homeserver.server import HomeServer


def make_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[matrix_errors], client_max_size=config.limits.max_request_body_bytes)

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        app[HS] = await HomeServer.start(config)
        yield
        await app[HS].close()

    app.cleanup_ctx.append(lifetime)
    if config.federation.enabled:
        from federation import endpoints
        from federation import media as federation_media
        from federation.listener import federation_listener_ctx, setup_well_known

        app.cleanup_ctx.append(federation_listener_ctx(endpoints.setup, federation_media.setup))
        setup_well_known(app, config)
    for module in (health, versions, wellknown, login, register, account, devices, profile, whispr, rooms, sync,
                   user_data, directory, media, friends, admin, push_rules, pushers, notifications, keys, to_device,
                   room_keys, spaces, relations, search, reports, thirdparty, presence):
        module.setup(app)
    return app
