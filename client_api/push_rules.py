"""The push rules API (/pushrules/): read all, read, put and delete one, its `enabled` and `actions`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from client_api.http import CLIENT_V3, hs, json_body, ok, requester
from homeserver.errors import MatrixError, bad_json
from homeserver.push.rules import RuleEdits, check_kind, check_scope, delete_rule, find, put_rule, set_attribute

P = f"{CLIENT_V3}/pushrules"
ATTRIBUTES = ("enabled", "actions")


async def get_all(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok({"global": await hs(request).push_rules.ruleset(who.user_id)})


async def get_scope(request: web.Request) -> web.Response:
    who = await requester(request)
    check_scope(request.match_info["scope"])
    return ok(await hs(request).push_rules.ruleset(who.user_id))


async def get_kind(request: web.Request) -> web.Response:
    who = await requester(request)
    m = request.match_info
    check_scope(m["scope"])
    check_kind(m["kind"])
    return ok((await hs(request).push_rules.ruleset(who.user_id))[m["kind"]])


async def get_rule(request: web.Request) -> web.Response:
    who = await requester(request)
    m = request.match_info
    check_scope(m["scope"])
    return ok(find(await hs(request).push_rules.ruleset(who.user_id), m["kind"], m["rule_id"]))


async def put(request: web.Request) -> web.Response:
    who = await requester(request)
    m = request.match_info
    check_scope(m["scope"])
    body = await json_body(request)
    before, after = request.query.get("before"), request.query.get("after")

    def edit(edits: RuleEdits, ruleset: dict[str, list[dict[str, Any]]]) -> None:
        put_rule(edits, m["kind"], m["rule_id"], body, before, after)

    await hs(request).push_rules.change(who.user_id, edit)
    return ok()


async def delete(request: web.Request) -> web.Response:
    who = await requester(request)
    m = request.match_info
    check_scope(m["scope"])

    def edit(edits: RuleEdits, ruleset: dict[str, list[dict[str, Any]]]) -> None:
        delete_rule(edits, m["kind"], m["rule_id"])

    await hs(request).push_rules.change(who.user_id, edit)
    return ok()


def _attribute(request: web.Request) -> str:
    attribute = request.match_info["attribute"]
    if attribute not in ATTRIBUTES:
        raise MatrixError(400, "M_INVALID_PARAM", f"A rule's attributes are {', '.join(ATTRIBUTES)}")
    return attribute


async def get_attribute(request: web.Request) -> web.Response:
    who = await requester(request)
    m = request.match_info
    check_scope(m["scope"])
    attribute = _attribute(request)
    rule = find(await hs(request).push_rules.ruleset(who.user_id), m["kind"], m["rule_id"])
    return ok({attribute: rule.get(attribute, True if attribute == "enabled" else [])})


async def put_attribute(request: web.Request) -> web.Response:
    who = await requester(request)
    m = request.match_info
    check_scope(m["scope"])
    attribute = _attribute(request)
    body = await json_body(request)
    if attribute not in body:
        raise bad_json(f"The body needs {attribute!r}")

    def edit(edits: RuleEdits, ruleset: dict[str, list[dict[str, Any]]]) -> None:
        set_attribute(edits, ruleset, m["kind"], m["rule_id"], attribute, body[attribute])

    await hs(request).push_rules.change(who.user_id, edit)
    return ok()


def setup(app: web.Application) -> None:
    app.router.add_get(f"{P}/", get_all)
    app.router.add_get(P, get_all)
    app.router.add_get(f"{P}/{{scope}}/", get_scope)
    app.router.add_get(f"{P}/{{scope}}", get_scope)
    app.router.add_get(f"{P}/{{scope}}/{{kind}}/", get_kind)
    app.router.add_get(f"{P}/{{scope}}/{{kind}}/{{rule_id}}", get_rule)
    app.router.add_put(f"{P}/{{scope}}/{{kind}}/{{rule_id}}", put)
    app.router.add_delete(f"{P}/{{scope}}/{{kind}}/{{rule_id}}", delete)
    app.router.add_get(f"{P}/{{scope}}/{{kind}}/{{rule_id}}/{{attribute}}", get_attribute)
    app.router.add_put(f"{P}/{{scope}}/{{kind}}/{{rule_id}}/{{attribute}}", put_attribute)
