"""The HomeServer object: every domain service, built from a Config, owned by the app."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from homeserver.accounts.accounts import Accounts
from homeserver.rooms.chats import Chats
from homeserver.config import Config, ensure_secrets
from homeserver.rooms.directory import Directory
from homeserver.e2ee.service import E2ee
from homeserver.accounts.email_verification import EmailVerifier
from homeserver.ephemeral import Ephemeral, make_ephemeral
from homeserver.events.crypto import load_or_create_signing_key
from homeserver.sync.filters import Filters
from homeserver.sync.ignored import IgnoredUsers
from homeserver.accounts.login import LoginService
from homeserver.accounts.mailer import Mailer
from homeserver.rooms.membership import Membership
from homeserver.push.notifications import Notifications
from homeserver.push.push_rules import PushRules
from homeserver.push.rules import USER_ID
from homeserver.push.pushers import Pushers
from homeserver.push.gateway import HttpGateway
from homeserver.push.email import EmailNotifier
from homeserver.sync.notifier import Notifier, make_notifier
from homeserver.accounts.passwords import PasswordHasher
from homeserver.accounts.profiles import Profiles
from homeserver.accounts.deactivation import Deactivation
from homeserver.accounts.openid import OpenId
from homeserver.accounts.threepids import Threepids
from homeserver.friends.markers import friend_request_push_rule
from homeserver.friends.service import Friends
from homeserver.presence.presence import Presence
from homeserver.ratelimit import RateLimiter
from homeserver.rooms.creation import RoomCreator
from homeserver.rooms.guest_access import GuestEviction
from homeserver.rooms.previews import RoomPreviews
from homeserver.rooms.room_data import RoomData
from homeserver.rooms.rooms import Rooms
from homeserver.sync.sync import SyncService
from homeserver.rooms.timeline import Timeline
from homeserver.rooms.upgrades import RoomUpgrades
from homeserver.rooms.timestamps import EventsByTime
from homeserver.spaces.hierarchy import Spaces
from homeserver.relations.aggregations import Aggregations
from homeserver.relations.service import RelationsService
from homeserver.search.service import Search
from homeserver.reports.service import Reports
from homeserver.rooms.visibility import HistoryVisibility
from homeserver.accounts.totp import Totp
from homeserver.sync.typing_state import Typing
from homeserver.accounts.uia import InteractiveAuth
from homeserver.admin.media import AdminMedia
from homeserver.admin.registration_tokens import RegistrationTokens
from homeserver.admin.reports import AdminReports
from homeserver.admin.rooms import AdminRooms
from homeserver.admin.shared_secret import SharedSecretRegistration
from homeserver.admin.users import AdminUsers
from media.repository import MediaRepository
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
    notifier: Notifier
    typing: Typing
    rooms: Rooms
    membership: Membership
    chats: Chats
    sync: SyncService
    timeline: Timeline
    relations: RelationsService
    visibility: HistoryVisibility
    room_data: RoomData
    directory: Directory
    filters: Filters
    executor: ThreadPoolExecutor
    media: MediaRepository
    deactivation: Deactivation
    openid: OpenId
    guest_eviction: GuestEviction
    previews: RoomPreviews
    ignored: IgnoredUsers
    friends: Friends
    registration_tokens: RegistrationTokens
    shared_secret: SharedSecretRegistration
    admin_users: AdminUsers
    admin_rooms: AdminRooms
    admin_media: AdminMedia
    push_rules: PushRules
    notifications: Notifications
    pushers: Pushers
    gateway: HttpGateway
    email_notifier: EmailNotifier
    e2ee: E2ee
    upgrades: RoomUpgrades
    spaces: Spaces
    events_by_time: EventsByTime
    search: Search
    reports: Reports
    admin_reports: AdminReports
    threepids: Threepids
    presence: Presence
    # The federation side (keys, client, inbound pipeline, outbound queue); None when disabled.
    federation: Any = None
    keyring: Any = None

    @classmethod
    async def start(cls, config: Config) -> "HomeServer":
        ensure_secrets(config)
        db = await open_database(
            config.database.engine, path=str(config.sqlite_path()), url=config.database.url,
            pool_min=config.database.pool_min, pool_max=config.database.pool_max,
            sqlite_synchronous=config.database.sqlite_synchronous)
        store = Store(db)
        prefix = config.redis.key_prefix or f"whispr:{config.server_name}:"
        ephemeral = make_ephemeral(config.redis.url, prefix=prefix)
        notifier = make_notifier(config.redis.url, channel=prefix + "notify")
        notifier.seed(await store.rooms.current_stream(), await store.rooms.last_streams())
        await notifier.start()
        # Password hashing is CPU-bound: a small pool keeps it off the event loop.
        executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="whispr-cpu")
        limiter = RateLimiter(config.rate_limits, ephemeral)
        mailer = Mailer(config.mail)
        accounts = Accounts(config, store, PasswordHasher(config.passwords, executor), notifier)
        totp = Totp(store, ephemeral)
        signing_key = load_or_create_signing_key(config.data_path / "signing.key")
        rooms = Rooms(config.server_name, store, signing_key, notifier)
        membership = Membership(rooms, store)
        room_data = RoomData(rooms, store, notifier)
        typing = Typing(notifier)
        visibility = HistoryVisibility(rooms, store)
        ignored = IgnoredUsers(store, notifier)
        aggregations = Aggregations(rooms, store, ignored)
        sync = SyncService(rooms, store, notifier, typing, visibility, ignored, aggregations)
        e2ee = E2ee(config.server_name, store, notifier)
        sync.e2ee = e2ee.sync
        presence = Presence(config.server_name, config.presence, store, notifier)
        sync.presence = presence
        rooms.on_local_event.append(presence.event_sent)
        accounts.on_devices_deleted.append(e2ee.devices_deleted)
        accounts.on_device_updated.append(e2ee.device_updated)
        push_rules = PushRules(store, notifier)
        push_rules.add_default_rule("override", friend_request_push_rule(USER_ID), after=".m.rule.suppress_notices")
        notifications = Notifications(config.server_name, push_rules, rooms, store, ignored)
        room_data.on_account_data.append(ignored.account_data_changed)
        rooms.push = notifications
        sync.notifications, sync.push_rules = notifications, push_rules
        from federation.client import AddressGuard  # the same SSRF guard as outbound federation
        gateway = HttpGateway(AddressGuard(config.push.allowed_private_ranges), config.push.gateway_timeout_s)
        guest_eviction = GuestEviction(rooms, store)
        timeline = Timeline(rooms, store, sync.current_token, visibility, ignored, aggregations)
        timeline.presence = presence.events_of
        rooms.on_stored.append(guest_eviction.observe)
        profiles = Profiles(store, config.server_name, membership)
        creator = RoomCreator(rooms, membership, store, config.rooms.default_version)
        chats = Chats(rooms, membership, creator, room_data)
        deactivation = Deactivation(accounts, membership, store)
        media = MediaRepository(config.server_name, config.media, config.media_path(), store.media, executor,
                                limiter)
        emails = EmailVerifier(store, mailer, config.public_baseurl, config.registration.unverified_email_ttl_s)
        hs = cls(
            config=config, store=store, ephemeral=ephemeral, limiter=limiter, mailer=mailer,
            accounts=accounts, uia=InteractiveAuth(ephemeral),
            emails=emails, threepids=Threepids(store, emails),
            login=LoginService(config.login, accounts, store, ephemeral, mailer, totp, limiter),
            totp=totp, profiles=profiles, notifier=notifier, typing=typing,
            rooms=rooms, membership=membership, chats=chats,
            sync=sync, timeline=timeline, visibility=visibility,
            relations=RelationsService(rooms, store, timeline, visibility, ignored),
            room_data=room_data,
            directory=Directory(rooms, store, config.server_name, config.user_directory.search_all_users),
            filters=Filters(store), executor=executor,
            media=media, deactivation=deactivation, openid=OpenId(store, config.server_name),
            guest_eviction=guest_eviction, previews=RoomPreviews(timeline, visibility, store, notifier, typing),
            ignored=ignored, friends=Friends(config.server_name, store, notifier, rooms, membership, chats, room_data,
                                             profiles, ignored),
            registration_tokens=RegistrationTokens(store.registration_tokens),
            shared_secret=SharedSecretRegistration(config.registration_shared_secret, ephemeral, accounts, profiles,
                                                   store.admin),
            admin_users=AdminUsers(config.server_name, accounts, deactivation, profiles, store),
            admin_rooms=AdminRooms(config.server_name, rooms, membership, store, ephemeral, creator),
            admin_media=AdminMedia(config.server_name, media, store),
            push_rules=push_rules, notifications=notifications,
            pushers=Pushers(store, notifications, rooms, gateway, config.push, lambda: notifier.position),
            gateway=gateway,
            email_notifier=EmailNotifier(config, store, notifications, rooms, mailer, lambda: notifier.position),
            e2ee=e2ee, upgrades=RoomUpgrades(rooms, membership, store),
            spaces=Spaces(config.server_name, rooms, membership, store, ephemeral),
            events_by_time=EventsByTime(config.server_name, rooms, store, timeline),
            search=Search(rooms, store, timeline, visibility, ignored),
            reports=Reports(store, timeline, rooms), admin_reports=AdminReports(store, rooms),
            presence=presence)
        await hs.media.start()
        await presence.start()
        hs.deactivation.on_deactivated += [hs.pushers.remove_user, hs.email_notifier.remove_user]
        await hs.pushers.start(notifier.shared)
        if config.push.deliver:
            hs.email_notifier.start()
        if config.federation.enabled:
            await hs._start_federation(signing_key)
        log.info("homeserver %s started (database: %s, redis: %s)", config.server_name,
                 config.database.engine, "yes" if config.redis.url else "no")
        return hs

    async def _start_federation(self, signing_key: Any) -> None:
        # Imported here: the domain does not depend on the federation package, only the assembly does.
        from federation.client import FederationClient
        from federation.keys import KeyRing
        from federation.service import Federation

        config = self.config
        client = FederationClient(config.server_name, signing_key, config.federation)
        await client.start()
        self.keyring = KeyRing.from_config(config, signing_key, self.store.server_keys, client)
        self.federation = Federation(
            config.server_name, self.store, self.rooms, self.membership, self.typing, self.room_data,
            self.keyring, client, config.federation.destination_min_retry_ms,
            config.federation.destination_max_retry_ms)
        await self.federation.start()
        from federation.e2ee import FederationE2ee
        self.federation.e2ee = FederationE2ee(config.server_name, self.store, self.e2ee, self.federation.sender,
                                              client)
        self.timeline.remote = self.federation.backfiller
        self.profiles.remote = self.federation
        self.directory.remote = self.federation
        self.directory.remote_public_rooms = self.federation
        self.spaces.remote = self.federation
        self.events_by_time.remote = self.federation
        from federation.media import FederationMediaSource
        self.media.remote = FederationMediaSource(client)
        from federation.presence import FederationPresence
        self.federation.presence = FederationPresence(config.server_name, self.store, self.presence,
                                                      self.federation.sender)
        self.rooms.on_event.append(self.federation.presence.member_event)

    async def close(self) -> None:
        if self.federation is not None:
            if self.federation.e2ee is not None:
                await self.federation.e2ee.close()
            if self.federation.presence is not None:
                await self.federation.presence.close()
            await self.federation.close()
            await self.federation.client.close()
        await self.presence.close()
        await self.friends.close()
        await self.admin_rooms.close()
        await self.pushers.close()
        await self.email_notifier.close()
        await self.gateway.close()
        await self.membership.close()
        await self.guest_eviction.close()
        await self.media.close()
        self.typing.close()
        await self.notifier.close()
        await self.ephemeral.close()
        await self.store.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
