"""Hashes, event IDs, signatures (against the spec's test vectors) and redaction."""

from __future__ import annotations

import base64
import copy
import hashlib
import stat

import pytest
from canonicaljson import encode_canonical_json
from signedjson.key import decode_signing_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json

from homeserver.events.crypto import (
    EventSignatureError, check_content_hash, compute_content_hash, compute_event_id, key_id,
    load_or_create_signing_key, room_id_for_create_event, sign_event, verify_event_signature,
)
from homeserver.events.redaction import redact
from homeserver.events.room_versions import (
    KNOWN_ROOM_VERSIONS, ROOM_V10, ROOM_V11, ROOM_V12, RedactionRules, StateResAlgorithm,
    get_room_version,
)

# Appendices, "Cryptographic Test Vectors".
SPEC_KEY = decode_signing_key_base64("ed25519", "1", "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")


def minimal_event() -> dict:
    return {
        "room_id": "!x:domain", "sender": "@a:domain", "origin": "domain",
        "origin_server_ts": 1000000, "signatures": {}, "hashes": {}, "type": "X", "content": {},
        "prev_events": [], "auth_events": [], "depth": 3, "unsigned": {"age_ts": 1000000},
    }


def redactable_event() -> dict:
    return {
        "content": {"body": "Here is the message content"}, "event_id": "$0:domain",
        "origin": "domain", "origin_server_ts": 1000000, "type": "m.room.message",
        "room_id": "!r:domain", "sender": "@u:domain", "signatures": {},
        "unsigned": {"age_ts": 1000000},
    }


# ---- spec vectors -------------------------------------------------------------------------------

def test_spec_json_signing_vectors() -> None:
    assert sign_json({}, "domain", SPEC_KEY)["signatures"]["domain"]["ed25519:1"] == (
        "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ")


def test_spec_minimal_event_vector() -> None:
    # The vectors predate v11 (they keep top-level `origin`), so v10's redaction rules apply.
    signed = sign_event(minimal_event(), "domain", SPEC_KEY, ROOM_V10)
    assert signed["hashes"] == {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"}
    assert signed["signatures"] == {"domain": {"ed25519:1": (
        "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg")}}
    assert signed["unsigned"] == {"age_ts": 1000000}
    assert compute_content_hash(minimal_event()) == "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"
    verify_event_signature(signed, "domain", get_verify_key(SPEC_KEY), ROOM_V10)


def test_spec_redactable_event_vector() -> None:
    signed = sign_event(redactable_event(), "domain", SPEC_KEY, ROOM_V10)
    assert signed["hashes"] == {"sha256": "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"}
    assert signed["signatures"]["domain"]["ed25519:1"] == (
        "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA")
    assert signed["content"] == {"body": "Here is the message content"}  # only the signed copy is redacted
    # v11 drops top-level `origin` before signing, so the signature differs from the vector.
    v11 = sign_event(redactable_event(), "domain", SPEC_KEY, ROOM_V11)
    assert v11["hashes"] == signed["hashes"]
    assert v11["signatures"] != signed["signatures"]


def test_event_id_is_reference_hash_of_redacted_event() -> None:
    signed = sign_event(minimal_event(), "domain", SPEC_KEY, ROOM_V11)
    # Independent recomputation: v11 redaction drops origin and unsigned; signatures go too.
    essential = {k: v for k, v in signed.items() if k not in ("origin", "unsigned", "signatures")}
    digest = hashlib.sha256(encode_canonical_json(essential)).digest()
    expected = "$" + base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert compute_event_id(signed, ROOM_V11) == expected
    assert "=" not in expected and "+" not in expected and "/" not in expected


def test_event_id_ignores_unsigned_and_signatures_but_not_content() -> None:
    signed = sign_event(redactable_event(), "domain", SPEC_KEY, ROOM_V11)
    event_id = compute_event_id(signed, ROOM_V11)
    noisy = copy.deepcopy(signed)
    noisy["unsigned"] = {"age": 5, "age_ts": 99}
    noisy["signatures"]["other.example"] = {"ed25519:x": "abc"}
    assert compute_event_id(noisy, ROOM_V11) == event_id
    edited = copy.deepcopy(signed)
    edited["content"]["body"] = "changed"
    edited = sign_event(edited, "domain", SPEC_KEY, ROOM_V11)  # new content hash
    assert compute_event_id(edited, ROOM_V11) != event_id
    # ...yet the redacted copy has the same ID as the original (the hash survives redaction).
    assert compute_event_id(redact(signed, ROOM_V11), ROOM_V11) == event_id


def test_v12_room_id_is_the_create_event_id() -> None:
    create = sign_event({"type": "m.room.create", "state_key": "", "sender": "@a:domain",
                         "content": {"room_version": "12"}, "origin_server_ts": 1, "depth": 1,
                         "prev_events": [], "auth_events": []}, "domain", SPEC_KEY, ROOM_V12)
    assert room_id_for_create_event(create, ROOM_V12) == "!" + compute_event_id(create, ROOM_V12)[1:]


# ---- hashes and signatures ----------------------------------------------------------------------

def test_sign_verify_round_trip_and_hash() -> None:
    key = generate_signing_key("a_test")
    signed = sign_event(redactable_event(), "hs.example", key, ROOM_V11)
    assert check_content_hash(signed)
    verify_event_signature(signed, "hs.example", get_verify_key(key), ROOM_V11)
    # A redacted copy still verifies: signatures only cover the redacted form.
    verify_event_signature(redact(signed, ROOM_V11), "hs.example", get_verify_key(key), ROOM_V11)
    assert key_id(key) == "ed25519:a_test"


def test_tampered_content_fails_hash_but_not_signature() -> None:
    key = generate_signing_key("a_test")
    signed = sign_event(redactable_event(), "hs.example", key, ROOM_V11)
    signed["content"]["body"] = "tampered"
    assert not check_content_hash(signed)
    # Message content is not signed directly, only via the hash: servers must redact such events.
    verify_event_signature(signed, "hs.example", get_verify_key(key), ROOM_V11)


def test_content_hash_missing_or_malformed() -> None:
    assert not check_content_hash(redactable_event())
    assert not check_content_hash({**redactable_event(), "hashes": {"sha256": "!!not base64!!"}})
    assert not check_content_hash({**redactable_event(), "hashes": "nope"})


def test_tampered_essential_field_fails_signature() -> None:
    key = generate_signing_key("a_test")
    signed = sign_event(redactable_event(), "hs.example", key, ROOM_V11)
    signed["sender"] = "@mallory:hs.example"
    with pytest.raises(EventSignatureError):
        verify_event_signature(signed, "hs.example", get_verify_key(key), ROOM_V11)


def test_forged_signature_fails() -> None:
    real, forger = generate_signing_key("a_real"), generate_signing_key("a_real")
    forged = sign_event(redactable_event(), "hs.example", forger, ROOM_V11)
    with pytest.raises(EventSignatureError):
        verify_event_signature(forged, "hs.example", get_verify_key(real), ROOM_V11)
    unsigned = {**redactable_event(), "hashes": {"sha256": compute_content_hash(redactable_event())}}
    with pytest.raises(EventSignatureError):
        verify_event_signature(unsigned, "hs.example", get_verify_key(real), ROOM_V11)
    # Signed by us but checked as if from another server.
    ours = sign_event(redactable_event(), "hs.example", real, ROOM_V11)
    with pytest.raises(EventSignatureError):
        verify_event_signature(ours, "other.example", get_verify_key(real), ROOM_V11)


def test_sign_event_keeps_other_servers_signatures() -> None:
    first, second = generate_signing_key("a_1"), generate_signing_key("a_2")
    once = sign_event(redactable_event(), "one.example", first, ROOM_V11)
    twice = sign_event(once, "two.example", second, ROOM_V11)
    verify_event_signature(twice, "one.example", get_verify_key(first), ROOM_V11)
    verify_event_signature(twice, "two.example", get_verify_key(second), ROOM_V11)


# ---- signing key file ---------------------------------------------------------------------------

def test_signing_key_created_once_with_private_mode(tmp_path) -> None:
    path = tmp_path / "keys" / "signing.key"
    key = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    algorithm, version, encoded = text.split()
    assert algorithm == "ed25519" and version == key.version and version.startswith("a_")
    again = load_or_create_signing_key(path)
    assert again.encode() == key.encode() and again.version == key.version


def test_empty_key_file_is_an_error(tmp_path) -> None:
    path = tmp_path / "signing.key"
    path.write_text("")
    with pytest.raises(ValueError):
        load_or_create_signing_key(path)


# ---- room versions ------------------------------------------------------------------------------

def test_room_versions() -> None:
    assert set(KNOWN_ROOM_VERSIONS) == {str(n) for n in range(1, 13)}
    assert get_room_version("11") is ROOM_V11 and get_room_version("13") is None
    assert ROOM_V10.creator_in_create_content and not ROOM_V11.creator_in_create_content
    assert ROOM_V10.redaction_rules is RedactionRules.V10 and ROOM_V11.redaction_rules is RedactionRules.V11
    assert not ROOM_V10.redacts_in_content and ROOM_V11.redacts_in_content
    assert ROOM_V12.room_id_from_create_event and not ROOM_V12.create_event_in_auth_events
    assert ROOM_V12.state_res is StateResAlgorithm.V2_1 and ROOM_V11.state_res is StateResAlgorithm.V2


# ---- redaction ----------------------------------------------------------------------------------

def _event(type_: str, content: dict, **extra) -> dict:
    return {"type": type_, "room_id": "!r:hs", "sender": "@a:hs", "content": content,
            "origin": "hs", "membership": "join", "prev_state": [], "unsigned": {"age": 1},
            "origin_server_ts": 1, "depth": 2, "prev_events": [], "auth_events": [],
            "hashes": {"sha256": "x"}, "signatures": {}, "state_key": "", **extra}


def test_redaction_top_level_keys_per_version() -> None:
    pdu = _event("m.room.message", {"body": "hi"}, junk=1, redacts="$x")
    v10 = redact(pdu, ROOM_V10)
    assert set(v10) == {"type", "room_id", "sender", "content", "origin", "membership", "prev_state",
                        "origin_server_ts", "depth", "prev_events", "auth_events", "hashes",
                        "signatures", "state_key"}
    assert v10["content"] == {}
    v11 = redact(pdu, ROOM_V11)
    assert set(v11) == set(v10) - {"origin", "membership", "prev_state"}
    assert pdu["content"] == {"body": "hi"}  # input untouched


@pytest.mark.parametrize("type_,content,v10_kept,v11_kept", [
    ("m.room.create", {"creator": "@a:hs", "room_version": "10", "m.federate": False},
     {"creator": "@a:hs"}, {"creator": "@a:hs", "room_version": "10", "m.federate": False}),
    ("m.room.join_rules", {"join_rule": "restricted", "allow": [{"type": "x"}], "other": 1},
     {"join_rule": "restricted", "allow": [{"type": "x"}]},
     {"join_rule": "restricted", "allow": [{"type": "x"}]}),
    ("m.room.power_levels", {"ban": 1, "events": {}, "events_default": 2, "kick": 3, "redact": 4,
                             "state_default": 5, "users": {}, "users_default": 6, "invite": 7,
                             "notifications": {"room": 50}},
     {"ban": 1, "events": {}, "events_default": 2, "kick": 3, "redact": 4, "state_default": 5,
      "users": {}, "users_default": 6},
     {"ban": 1, "events": {}, "events_default": 2, "kick": 3, "redact": 4, "state_default": 5,
      "users": {}, "users_default": 6, "invite": 7}),
    ("m.room.history_visibility", {"history_visibility": "shared", "x": 1},
     {"history_visibility": "shared"}, {"history_visibility": "shared"}),
    ("m.room.member", {"membership": "invite", "displayname": "A", "join_authorised_via_users_server": "@b:hs",
                       "third_party_invite": {"display_name": "x", "signed": {"token": "t"}}},
     {"membership": "invite", "join_authorised_via_users_server": "@b:hs"},
     {"membership": "invite", "join_authorised_via_users_server": "@b:hs",
      "third_party_invite": {"signed": {"token": "t"}}}),
    ("m.room.redaction", {"redacts": "$e", "reason": "spam"}, {}, {"redacts": "$e"}),
    ("m.room.topic", {"topic": "secret"}, {}, {}),
])
def test_redaction_content_per_version(type_: str, content: dict, v10_kept: dict, v11_kept: dict) -> None:
    pdu = _event(type_, content)
    assert redact(pdu, ROOM_V10)["content"] == v10_kept
    assert redact(pdu, ROOM_V11)["content"] == v11_kept
    assert redact(pdu, ROOM_V12)["content"] == v11_kept


def test_v11_member_third_party_invite_without_signed_is_dropped() -> None:
    pdu = _event("m.room.member", {"membership": "invite", "third_party_invite": {"display_name": "x"}})
    assert redact(pdu, ROOM_V11)["content"] == {"membership": "invite"}
