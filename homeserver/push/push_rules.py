"""Each user's push rules: rendered for the API, compiled for evaluation, both kept until they change.

Edits are stored with the rendered rules as the user's `m.push_rules` account data in one
transaction (storage/push.py), so /sync reports every change. The cache is this process's; with
several workers (a shared notifier), a user's cached edits are read again once the notifier
reports any change of that user after they were read (a change made by another worker is one)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from homeserver.push.evaluator import CompiledRules
from homeserver.push.rules import DefaultRules, RuleEdits, render
from homeserver.sync.notifier import Notifier
from storage.store import Store

EDITS_CACHE_SIZE = 100_000


class PushRules:
    def __init__(self, store: Store, notifier: Notifier, defaults: DefaultRules | None = None) -> None:
        self._store = store
        self._notifier = notifier
        self.defaults = defaults or DefaultRules()
        # user -> their edits (None: none), and their own compiled set when they have edits.
        self._edits: OrderedDict[str, RuleEdits | None] = OrderedDict()
        self._compiled: dict[str, CompiledRules] = {}
        self._shared: tuple[int, CompiledRules] | None = None
        self._read_at: dict[str, int] = {}  # with a shared notifier: the position each user's edits were read at

    def add_default_rule(self, kind: str, rule: dict[str, Any], after: str | None = None) -> None:
        """A server-default rule of a Whispr feature (e.g. friend requests); see DefaultRules.add."""
        self.defaults.add(kind, rule, after)
        self._compiled.clear()

    async def _load(self, user_ids: Iterable[str]) -> None:
        if self._notifier.shared:
            missing = [u for u in user_ids if u not in self._edits
                       or self._notifier.user_changed_since(u, self._read_at.get(u, 0))]
        else:
            missing = [u for u in user_ids if u not in self._edits]
        if not missing:
            return
        position = self._notifier.position  # read first: a change after it is seen next time
        found = await self._store.push.rule_edits(missing)
        for user_id in missing:
            self._remember(user_id, RuleEdits.from_json(found[user_id]) if user_id in found else None, position)

    def _remember(self, user_id: str, edits: RuleEdits | None, position: int) -> None:
        self._edits[user_id] = edits
        if self._notifier.shared:
            self._read_at[user_id] = position
        self._compiled.pop(user_id, None)
        if len(self._edits) > EDITS_CACHE_SIZE:
            gone, _ = self._edits.popitem(last=False)
            self._compiled.pop(gone, None)
            self._read_at.pop(gone, None)

    def forget(self, user_id: str) -> None:
        self._edits.pop(user_id, None)
        self._compiled.pop(user_id, None)
        self._read_at.pop(user_id, None)

    async def ruleset(self, user_id: str) -> dict[str, list[dict[str, Any]]]:
        """The user's rules as the API shows them (their IDs filled in)."""
        await self._load([user_id])
        return render(self.defaults.for_user(user_id), self._edits.get(user_id) or RuleEdits())

    def _shared_rules(self) -> CompiledRules:
        if self._shared is None or self._shared[0] != self.defaults.version:
            self._shared = (self.defaults.version, CompiledRules(render(self.defaults.template(), RuleEdits())))
        return self._shared[1]

    async def compiled(self, user_ids: list[str]) -> dict[str, CompiledRules]:
        """Each user's compiled rules; those who changed nothing share one object."""
        await self._load(user_ids)
        shared = self._shared_rules()
        out: dict[str, CompiledRules] = {}
        for user_id in user_ids:
            edits = self._edits.get(user_id)
            if edits is None:
                out[user_id] = shared
                continue
            compiled = self._compiled.get(user_id)
            if compiled is None:
                compiled = self._compiled[user_id] = CompiledRules(render(self.defaults.template(), edits))
            out[user_id] = compiled
        return out

    async def change(self, user_id: str,
                     edit: Callable[[RuleEdits, dict[str, list[dict[str, Any]]]], None]) -> None:
        """Apply `edit(edits, current rules)` (it raises MatrixError to refuse), store, tell syncs."""
        rendered: dict[str, Any] = {}

        def apply(raw: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
            edits = RuleEdits.from_json(raw)
            edit(edits, render(self.defaults.for_user(user_id), edits))
            rendered["global"] = render(self.defaults.for_user(user_id), edits)
            return edits.to_json(), {"global": rendered["global"]}

        stream = await self._store.push.update_rules(user_id, apply)
        self.forget(user_id)
        await self._notifier.notify(stream, None, [user_id])
