"""The server ACL matcher (m.room.server_acl): the spec's order, globs, ports, IP literals, case."""

from __future__ import annotations

import time

import pytest

from homeserver.rooms.server_acl import ServerAcl, host_of


def acl(**content: object) -> ServerAcl:
    return ServerAcl.from_content(content)


def test_the_spec_order() -> None:
    rules = acl(allow=["*"], deny=["evil.com", "*.evil.com"])
    assert rules.allows("good.org")
    assert not rules.allows("evil.com")
    assert not rules.allows("matrix.evil.com")
    assert rules.allows("notevil.com")  # "*.evil.com" needs the dot
    # deny wins over allow
    assert not acl(allow=["evil.com"], deny=["evil.com"]).allows("evil.com")
    # nothing in allow: nobody, not even a server that no deny names
    assert not acl(deny=["evil.com"]).allows("good.org")
    assert not acl().allows("good.org")
    assert acl(allow=["good.org"]).allows("good.org") and not acl(allow=["good.org"]).allows("other.org")


def test_wildcards() -> None:
    star = acl(allow=["m*x.org"])
    assert star.allows("mx.org") and star.allows("matrix.org") and not star.allows("matrix.org.evil")
    one = acl(allow=["?.example"])
    assert one.allows("a.example") and not one.allows(".example") and not one.allows("ab.example")
    mixed = acl(allow=["*.m?trix.*"])
    assert mixed.allows("chat.matrix.org") and mixed.allows("x.metrix.net") and not mixed.allows("matrix.org")
    # Regex characters in a pattern are literal.
    assert not acl(allow=["a.b"]).allows("axb") and acl(allow=["a.b"]).allows("a.b")
    assert not acl(allow=["[a-z]*"]).allows("abc") and not acl(allow=["(.*)"]).allows("x")


def test_ports_are_not_considered() -> None:
    rules = acl(allow=["*"], deny=["evil.com"])
    for name in ("evil.com", "evil.com:8448", "evil.com:1234"):
        assert not rules.allows(name)
    assert rules.allows("good.org:8448")
    # A pattern naming a port matches nothing, since names are compared without theirs.
    assert acl(allow=["*"], deny=["evil.com:8448"]).allows("evil.com:8448")
    assert host_of("[::1]:8448") == "[::1]" and host_of("[::1]") == "[::1]" and host_of("a.b:1") == "a.b"


def test_ip_literals() -> None:
    closed = acl(allow=["*"], allow_ip_literals=False)
    for name in ("1.2.3.4", "1.2.3.4:8448", "[::1]", "[2001:db8::1]:8448"):
        assert not closed.allows(name), name
    assert closed.allows("example.org") and closed.allows("1.2.3.4.example.org")
    # Missing, or anything but false, allows them.
    for content in ({"allow": ["*"]}, {"allow": ["*"], "allow_ip_literals": "false"},
                    {"allow": ["*"], "allow_ip_literals": 0}, {"allow": ["*"], "allow_ip_literals": True}):
        assert ServerAcl.from_content(content).allows("1.2.3.4:8448"), content
    # IP literals can still be named in the lists.
    assert not acl(allow=["*"], deny=["127.0.0.1"]).allows("127.0.0.1:8448")
    assert not acl(allow=["*"], deny=["[::1]"]).allows("[::1]:8448")


def test_case_insensitive() -> None:
    rules = acl(allow=["*.Example.ORG"], deny=["BAD.example.org"])
    assert rules.allows("chat.example.org") and rules.allows("CHAT.EXAMPLE.ORG")
    assert not rules.allows("bad.EXAMPLE.org") and not rules.allows("Bad.Example.Org:443")


def test_malformed_content() -> None:
    # Entries that are not strings are ignored; lists that are not lists count as empty.
    assert acl(allow=["*", 5, None], deny=[{"x": 1}]).allows("a.org")
    assert not acl(allow="*").allows("a.org")
    assert acl(allow=["*"], deny="a.org").allows("a.org")
    assert not ServerAcl.from_content("not an object").allows("a.org")


def test_hostile_patterns_cost_linear_time() -> None:
    """Patterns built to make a backtracking matcher take exponential time are matched quickly."""
    rules = acl(allow=["*a*a*a*a*a*a*a*a*a*a*a*a*b"] * 50, deny=["?" * 300])
    start = time.monotonic()
    assert not rules.allows("a" * 250)
    assert time.monotonic() - start < 0.5


@pytest.mark.parametrize("name", ["evil.com", "EVIL.COM:1", "x.evil.com"])
def test_many_patterns(name: str) -> None:
    rules = acl(allow=["*"], deny=[f"server{i}.example" for i in range(5000)] + ["evil.com", "*.evil.com"])
    assert not rules.allows(name)
    assert rules.allows("server5000.example") and not rules.allows("server4999.example")
