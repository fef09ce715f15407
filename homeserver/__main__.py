"""Command line: run the server, generate a config, register a user, rotate the signing key, and the
admin operations a server with no admin user yet needs (the admin API does the rest).

    python -m homeserver --config FILE              run the homeserver
    python -m homeserver generate-config [-o FILE]  write a fresh config with new secrets
                                                    (and a self-signed federation TLS pair in data_dir)
    python -m homeserver register-user --config FILE --user NAME [--password PW] [--email ADDR] [--admin]
    python -m homeserver make-admin --config FILE [--revoke] USER        grant (or take back) server admin
    python -m homeserver list-users --config FILE [--deactivated]
    python -m homeserver reset-password --config FILE USER [--password PW] [--keep-devices]
    python -m homeserver deactivate-user --config FILE USER [--erase]
    python -m homeserver create-registration-token --config FILE [--token T] [--uses N] [--expiry-ts MS]
    python -m homeserver rotate-signing-key --config FILE
    python -m homeserver quarantine-media --config FILE [--undo] MXC...   hide media (404) but keep it;
                                                                         by content: same bytes, same fate
    python -m homeserver delete-media --config FILE MXC...                delete media and, unless other
                                                                         items share them, its bytes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import getpass
import logging
import sys
from pathlib import Path
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import uvloop
from aiohttp import web

from homeserver import log_output
from homeserver.config import ConfigError, generate_config_text, load_config
from homeserver.errors import MatrixError

if TYPE_CHECKING:
    from homeserver.server import HomeServer

GC_YOUNG_THRESHOLD = 20_000
ADMIN_COMMANDS = ("make-admin", "list-users", "reset-password", "deactivate-user", "create-registration-token")


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    log_buffer = log_output.configure(config.log_level)
    from homeserver.web.protocol import serve_app
    from homeserver.app import make_app

    # uvloop: about 1.4x the messages/s of the default loop on the send path (bench/).
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = make_app(config)
    app.on_startup.append(_settle_heap)
    app.cleanup_ctx.append(lambda _app: _flushing_logs(log_buffer))
    logging.getLogger("whispr").info("listening on http://%s:%d as %s", config.listen.host,
                                     config.listen.port, config.server_name)
    log_buffer.flush()
    try:
        asyncio.run(serve_app(app, config))
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    return 0


async def _flushing_logs(buffer: logging.Handler) -> AsyncIterator[None]:
    task = asyncio.create_task(log_output.flush_periodically(buffer))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _settle_heap(app: web.Application) -> None:
    """Keep the collector off what startup built (modules, config, keys): a full collection
    otherwise walks all of it and stalls every request for tens of milliseconds (bench/)."""
    gc.collect()
    gc.freeze()
    # Fewer, larger young collections: request handling makes short-lived containers by the thousand.
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


def _generate(args: argparse.Namespace) -> int:
    text = generate_config_text(args.server_name, args.data_dir)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        path = Path(args.output)
        if path.exists() and not args.force:
            print(f"{path} exists; use --force to overwrite", file=sys.stderr)
            return 1
        path.write_text(text)
        path.chmod(0o600)
        print(f"wrote {path}")
        _generate_tls(args)
    return 0


def _generate_tls(args: argparse.Namespace) -> None:
    """A self-signed federation certificate and key in data_dir, for development (kept if present)."""
    from federation.listener import dev_certificate_names, generate_self_signed_cert, tls_paths
    from homeserver.config import Config

    config = Config(server_name=args.server_name, data_dir=args.data_dir)
    cert, key = tls_paths(config)
    if cert.exists() or key.exists():
        print(f"kept the existing TLS files in {config.data_path}")
        return
    generate_self_signed_cert(cert, key, dev_certificate_names(config.server_name))
    print(f"wrote {cert} and {key} (self-signed, for development: use a CA-signed certificate in production)")


def _rotate(args: argparse.Namespace) -> int:
    from federation.keys import rotate_signing_key

    config = load_config(args.config)
    try:
        old_id, new_id = rotate_signing_key(config.data_path)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if old_id:
        print(f"retired {old_id} (now published under old_verify_keys)")
    print(f"new signing key {new_id}; restart the server (every worker) to sign with it")
    return 0


async def _register(args: argparse.Namespace) -> int:
    from homeserver.server import HomeServer

    config = load_config(args.config)
    password = args.password or getpass.getpass("Password: ")
    hs = await HomeServer.start(config)
    try:
        user = await hs.accounts.create_user(args.user, password, email=args.email, email_validated=True,
                                             allow_reserved=True)
        if args.admin:
            await hs.admin_users.set_admin(user.user_id, True)
    except MatrixError as e:
        print(f"error: {e.errcode}: {e.error}", file=sys.stderr)
        return 1
    finally:
        await hs.close()
    print(f"registered {user.user_id}{' (server admin)' if args.admin else ''}")
    return 0


def _user_id(name: str, server_name: str) -> str:
    """A full user ID, or a localpart of this server."""
    return name if name.startswith("@") else f"@{name.lower()}:{server_name}"


async def _admin_command(args: argparse.Namespace) -> int:
    """make-admin, list-users, reset-password, deactivate-user, create-registration-token.

    They work on the database the server uses, so they may run beside it; a running server without
    Redis, though, learns of revoked sessions only when it restarts (use the admin API there)."""
    from homeserver.server import HomeServer

    config = load_config(args.config)
    # Only a deactivation has something to tell other servers (the leaves of its rooms).
    config.federation.enabled = config.federation.enabled and args.command == "deactivate-user"
    password = None
    if args.command == "reset-password":
        password = args.password or getpass.getpass("New password: ")
    hs = await HomeServer.start(config)
    try:
        lines = await _admin_operation(hs, args, password)
    except MatrixError as e:
        print(f"error: {e.errcode}: {e.error}", file=sys.stderr)
        return 1
    finally:
        await hs.close()
    for line in lines:
        print(line)
    return 0


async def _admin_operation(hs: "HomeServer", args: argparse.Namespace, password: str | None) -> list[str]:
    users = hs.admin_users
    if args.command == "list-users":
        rows = ["user_id\tadmin\tstate\tdisplayname"]
        offset: int | None = 0
        while offset is not None:
            page = await users.list_users(name=None, user_id=None, deactivated=args.deactivated, admins=None,
                                          order_by="name", backwards=False, offset=offset, limit=1000)
            rows += [f"{u['name']}\t{'admin' if u['admin'] else '-'}\t"
                     f"{'deactivated' if u['deactivated'] else 'active'}\t{u['displayname'] or ''}"
                     for u in page["users"]]
            offset = int(page["next_token"]) if "next_token" in page else None
        return rows
    if args.command == "create-registration-token":
        body: dict[str, Any] = {"uses_allowed": args.uses, "expiry_time": args.expiry_ts}
        if args.token is not None:
            body["token"] = args.token
        token = await hs.registration_tokens.create(body)
        return [token.token]
    user_id = _user_id(args.user, hs.config.server_name)
    if args.command == "make-admin":
        await users.set_admin(user_id, not args.revoke)
        return [f"{user_id} is {'no longer' if args.revoke else 'now'} a server admin"]
    if args.command == "reset-password":
        await users.reset_password(user_id, password, not args.keep_devices)
        return [f"password of {user_id} reset" + ("" if args.keep_devices else "; its sessions are logged out")]
    await users.deactivate(user_id, args.erase)
    return [f"deactivated {user_id}" + (" and erased its profile" if args.erase else "")]


async def _media_admin(args: argparse.Namespace) -> int:
    """Quarantine or delete media straight in the database and media store (the server may be running)."""
    from concurrent.futures import ThreadPoolExecutor

    from media.ids import is_mxc
    from media.repository import MediaRepository
    from storage import open_database
    from storage.media import MediaStore

    config = load_config(args.config)
    bad = [uri for uri in args.mxc if not is_mxc(uri)]
    if bad:
        print(f"error: not mxc:// URIs: {', '.join(bad)}", file=sys.stderr)
        return 1
    db = await open_database(config.database.engine, path=str(config.sqlite_path()), url=config.database.url,
                             pool_min=1, pool_max=2)
    executor = ThreadPoolExecutor(max_workers=1)
    repo = MediaRepository(config.server_name, config.media, config.media_path(), MediaStore(db), executor)
    missing = 0
    try:
        for uri in args.mxc:
            suffix = ""
            if args.command == "delete-media":
                done = await repo.delete(uri)
                verb = "deleted"
            else:
                # By content: every other item with the same bytes follows.
                others = await repo.set_quarantined(uri, not args.undo)
                done = others is not None
                verb = "released from quarantine" if args.undo else "quarantined"
                suffix = f" and {others} other item(s) with the same content" if others else ""
            print(f"{verb} {uri}{suffix}" if done else f"not found: {uri}")
            missing += not done
    finally:
        await db.close()
        executor.shutdown()
    return 1 if missing else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m homeserver", description="Whispr homeserver")
    parser.add_argument("--config", help="YAML config file (see config.sample.yaml)")
    sub = parser.add_subparsers(dest="command")
    gen = sub.add_parser("generate-config", help="write a fresh config with new secrets")
    gen.add_argument("-o", "--output", default="-", help="file to write, - for stdout (default)")
    gen.add_argument("--server-name", default="localhost:8448")
    gen.add_argument("--data-dir", default="./data")
    gen.add_argument("--force", action="store_true")
    reg = sub.add_parser("register-user", help="create an account from the shell")
    reg.add_argument("--config", dest="sub_config")
    reg.add_argument("--user", required=True, help="localpart of the new user")
    reg.add_argument("--password", help="asked for if not given")
    reg.add_argument("--email", help="a verified email address to attach")
    reg.add_argument("--admin", action="store_true", help="make the new user a server admin")
    make_admin = sub.add_parser("make-admin", help="make a user a server admin (the admin API's key)")
    make_admin.add_argument("--config", dest="sub_config")
    make_admin.add_argument("--revoke", action="store_true", help="take the admin flag away instead")
    make_admin.add_argument("user", help="localpart or @user:server")
    list_users = sub.add_parser("list-users", help="list the accounts: user ID, admin, state, display name")
    list_users.add_argument("--config", dest="sub_config")
    list_users.add_argument("--deactivated", action="store_true", help="include deactivated accounts")
    reset = sub.add_parser("reset-password", help="set a user's password (and log out their sessions)")
    reset.add_argument("--config", dest="sub_config")
    reset.add_argument("user", help="localpart or @user:server")
    reset.add_argument("--password", help="asked for if not given")
    reset.add_argument("--keep-devices", action="store_true", help="leave the user's sessions logged in")
    deactivate = sub.add_parser("deactivate-user", help="deactivate an account for good (its ID is never reused)")
    deactivate.add_argument("--config", dest="sub_config")
    deactivate.add_argument("user", help="localpart or @user:server")
    deactivate.add_argument("--erase", action="store_true", help="also clear the profile")
    token = sub.add_parser("create-registration-token",
                           help="a token for invite-only sign-up (registration.requires_token)")
    token.add_argument("--config", dest="sub_config")
    token.add_argument("--token", help="the token itself (default: 16 random letters and digits)")
    token.add_argument("--uses", type=int, help="how many sign-ups it allows (default: unlimited)")
    token.add_argument("--expiry-ts", type=int, help="when it expires, in ms since the epoch (default: never)")
    rot = sub.add_parser("rotate-signing-key",
                         help="retire the server's signing key (kept as an old key) and create a new one")
    rot.add_argument("--config", dest="sub_config")
    quarantine = sub.add_parser("quarantine-media", help="make media unavailable (404) without deleting it")
    quarantine.add_argument("--config", dest="sub_config")
    quarantine.add_argument("--undo", action="store_true", help="make quarantined media available again")
    quarantine.add_argument("mxc", nargs="+", help="mxc://server/mediaId")
    delete = sub.add_parser("delete-media", help="delete media (and its file, if nothing else shares it)")
    delete.add_argument("--config", dest="sub_config")
    delete.add_argument("mxc", nargs="+", help="mxc://server/mediaId")
    args = parser.parse_args(argv)
    if getattr(args, "sub_config", None):
        args.config = args.sub_config
    try:
        if args.command == "generate-config":
            return _generate(args)
        if not args.config:
            parser.error("--config is required")
        if args.command == "register-user":
            return asyncio.run(_register(args))
        if args.command in ADMIN_COMMANDS:
            return asyncio.run(_admin_command(args))
        if args.command == "rotate-signing-key":
            return _rotate(args)
        if args.command in ("quarantine-media", "delete-media"):
            return asyncio.run(_media_admin(args))
        return _run(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
