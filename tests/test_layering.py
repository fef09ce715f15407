"""The layering rule (README, "Layout"): dependencies point inward.

import-linter checks the contracts in pyproject.toml (the domain imports neither HTTP face nor
the shell's assembly; storage imports no HTTP code). It sees external packages only whole, so
the rule that the domain never touches aiohttp's server side is checked here from the source.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = ["accounts", "events", "rooms", "sync", "push", "e2ee", "friends", "presence", "search", "reports", "voip"]


def test_import_contracts_hold() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and " 0 broken" in result.stdout


def _web_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("aiohttp.web")]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("aiohttp.web") or (
                    node.module == "aiohttp" and any(a.name.startswith("web") for a in node.names)):
                found.append(f"{node.module}: {', '.join(a.name for a in node.names)}")
    return found


def test_domain_does_not_import_aiohttp_web() -> None:
    offenders = {}
    for package in DOMAIN:
        for path in sorted((ROOT / "homeserver" / package).rglob("*.py")):
            if found := _web_imports(path):
                offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}


def test_the_check_sees_a_web_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from aiohttp import web\nimport aiohttp.web_request\nimport aiohttp\n")
    assert _web_imports(module) == ["aiohttp: web", "aiohttp.web_request"]
