"""A real Synapse (matrix-synapse from PyPI) configured to federate with us over loopback.

The recipe is the team's (../shared/README.md): explicit ports in server names, a TLS
federation listener with a throwaway certificate, certificate checks off, loopback allowed,
no trusted key servers, both servers whitelisted, short retry backoff.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from federation.listener import generate_self_signed_cert

# Synapse's default ip_range_blacklist, less loopback (both servers live on 127.0.0.1).
_BLACKLIST = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "192.0.0.0/24",
              "169.254.0.0/16", "192.88.99.0/24", "198.18.0.0/15", "192.0.2.0/24", "198.51.100.0/24",
              "203.0.113.0/24", "224.0.0.0/4", "fe80::/10", "fc00::/7", "2001:db8::/32", "ff00::/8", "fec0::/10"]


def synapse_federation_config(tmp: Path, federation_port: int, server_names: list[str],
                              room_version: str = "10") -> dict[str, Any]:
    """extra_config for bench.servers.start_synapse: a TLS federation listener on `federation_port`."""
    cert, key = tmp / f"synapse-{federation_port}.crt", tmp / f"synapse-{federation_port}.key"
    generate_self_signed_cert(cert, key, ["127.0.0.1", "localhost"])
    return {
        "tls_certificate_path": str(cert),
        "tls_private_key_path": str(key),
        "federation_verify_certificates": False,
        "ip_range_whitelist": ["127.0.0.0/8", "::1/128"],
        "ip_range_blacklist": _BLACKLIST,
        "federation_ip_range_blacklist": _BLACKLIST,
        "trusted_key_servers": [],
        "federation_domain_whitelist": server_names,
        "federation": {"destination_min_retry_interval": "2s", "destination_max_retry_interval": "10s"},
        "default_room_version": room_version,
        "allow_public_rooms_over_federation": True,
    }


def federation_listener(federation_port: int) -> dict[str, Any]:
    return {"port": federation_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": True,
            "x_forwarded": False, "resources": [{"names": ["federation", "keys"], "compress": False}]}
