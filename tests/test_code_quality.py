"""Lint and types are part of the suite (pyproject.toml, [tool.ruff] and [tool.mypy]).

`make test` runs pytest, so a ruff finding or a mypy error fails it like any broken test. The
tools are run from the interpreter's own environment, the one `make test` installs them into.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(tool: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    path = BIN / tool
    exe = str(path) if path.exists() else shutil.which(tool)
    assert exe, f"{tool} is not installed: pip install -e '.[test]'"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True)


def test_ruff_is_clean() -> None:
    result = _run("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    # The packages to check come from [tool.mypy] files; no cache so a stale one cannot hide an error.
    result = _run("mypy", "--no-incremental", "--cache-dir", "/dev/null")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_sees_a_call_to_a_missing_method(tmp_path: Path) -> None:
    """The configuration catches issue 10 item 0's bug class: the ingester called, on the domain's
    Rooms, a method only the store had, and every /send with a gap answered 500."""
    module = tmp_path / "gap.py"
    module.write_text(
        "from homeserver.rooms.rooms import Rooms\n\n\n"
        "async def fill_gap(rooms: Rooms, room_id: str) -> None:\n"
        "    await rooms.no_such_method(room_id)\n")
    result = _run("mypy", "--no-incremental", "--cache-dir", "/dev/null",
                  "--config-file", str(ROOT / "pyproject.toml"), str(module))
    assert result.returncode == 1, result.stdout + result.stderr
    assert '"Rooms" has no attribute "no_such_method"' in result.stdout
