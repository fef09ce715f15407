"""Events: the PDU model, room versions, hashing and signing, auth rules, state resolution, redaction."""
