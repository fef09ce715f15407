"""Federation (Server-Server API): signing keys, X-Matrix auth, inbound endpoints, outbound queue."""
