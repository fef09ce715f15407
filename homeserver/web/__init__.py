"""HTTP plumbing both faces share (client_api and federation): the app key and JSON bodies,
Matrix error responses, the connection handler, the access log, media file responses.

Part of the shell: the domain packages never import it (tests/test_layering.py)."""
