"""Start and stop homeservers (Whispr and Synapse) as subprocesses for benchmarks and tests.

Each server gets a free loopback port, a temporary data directory (removed on stop)
and, when asked, a fresh PostgreSQL database (dropped on stop). A started server is a
:class:`RunningServer`; it answers ``GET /_matrix/client/versions`` before it is returned.

    with start_synapse(python=synapse_python()) as hs:
        print(hs.base_url, hs.pid, hs.cpu_seconds(), hs.rss_kb())

Only the standard library and PyYAML are used, so the helpers work from plain scripts,
from pytest fixtures and from asyncio code (call them in a thread there if blocking
for a few seconds matters).

Environment:
    WHISPR_SYNAPSE_PYTHON  an interpreter that has matrix-synapse (and psycopg2 for
                           PostgreSQL); otherwise bench/.venv-synapse is created by
                           bench/setup_synapse.sh on first use.
    WHISPR_TEST_POSTGRES   admin URL of the PostgreSQL server (same as the test suite);
                           default postgresql://postgres@127.0.0.1:5432/postgres.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import yaml

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
SYNAPSE_VERSION = "1.163.2"
SYNAPSE_VENV = BENCH_DIR / ".venv-synapse"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

DbEngine = Literal["sqlite", "postgres"]
# A rate-limit bucket no benchmark will ever empty.
_UNLIMITED = {"per_second": 100000, "burst_count": 100000}


class ServerStartError(RuntimeError):
    """The server exited or did not answer in time; the message ends with its log tail."""


# --------------------------------------------------------------------------- /proc helpers

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2:].split()


def cpu_seconds(pid: int, include_reaped_children: bool = False) -> float:
    """User + system CPU time used so far by process ``pid`` (from /proc/PID/stat)."""
    f = _stat_fields(pid)
    # After the ')' field 3 (state) is index 0: utime=14, stime=15, cutime=16, cstime=17.
    ticks = int(f[11]) + int(f[12])
    if include_reaped_children:
        ticks += int(f[13]) + int(f[14])
    return ticks / _CLK_TCK


def rss_kb(pid: int, key: str = "VmRSS") -> int:
    """Resident memory of ``pid`` in KiB from /proc/PID/status (``VmHWM`` gives the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def descendants(pid: int) -> list[int]:
    """PIDs of all live descendants of ``pid`` (worker processes, if a server forks)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _sum_over_tree(pid: int, fn: Callable[[int], float]) -> float:
    total = 0.0
    for p in [pid, *descendants(pid)]:
        try:
            total += fn(p)
        except (OSError, KeyError):  # exited meanwhile
            pass
    return total


# --------------------------------------------------------------------------- utilities


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the usual small race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def deep_merge(into: dict[str, Any], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge ``extra`` into ``into`` recursively (mappings merge, everything else replaces)."""
    for k, v in (extra or {}).items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            deep_merge(into[k], v)
        else:
            into[k] = v
    return into


def wait_ready(base_url: str, process: subprocess.Popen[bytes] | None = None,
               timeout: float = 60.0, log_path: Path | None = None) -> None:
    """Poll ``GET /_matrix/client/versions`` until it answers 200; fail early if the process exits."""
    url = base_url.rstrip("/") + "/_matrix/client/versions"
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerStartError(f"server exited with code {process.returncode} before answering"
                                   f"{_log_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
                last_error = f"HTTP {resp.status}"
        except urllib.error.HTTPError as e:
            last_error = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            last_error = str(e)
        time.sleep(0.1)
    raise ServerStartError(f"{url} not ready after {timeout:.0f}s ({last_error}){_log_tail(log_path)}")


def _log_tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return ""
    tail = path.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {path} ---\n" + "\n".join(tail)


# --------------------------------------------------------------------------- PostgreSQL


@dataclass
class PostgresAdmin:
    """Creates and drops databases through the ``psql`` client (no Python driver needed)."""

    url: str = field(default_factory=lambda: os.environ.get("WHISPR_TEST_POSTGRES") or DEFAULT_PG_URL)

    @property
    def _parts(self) -> urllib.parse.SplitResult:
        return urllib.parse.urlsplit(self.url)

    @property
    def host(self) -> str:
        return self._parts.hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return self._parts.port or 5432

    @property
    def user(self) -> str:
        return urllib.parse.unquote(self._parts.username or "postgres")

    @property
    def password(self) -> str:
        return urllib.parse.unquote(self._parts.password or "")

    def database_url(self, name: str) -> str:
        """The URL of database ``name`` on the same server, with the same credentials."""
        return urllib.parse.urlunsplit(self._parts._replace(path="/" + name, query=""))

    def _psql(self, sql: str) -> None:
        env = dict(os.environ, PGPASSWORD=self.password) if self.password else None
        dbname = self._parts.path.lstrip("/") or "postgres"
        cmd = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.host, "-p", str(self.port),
               "-U", self.user, "-d", dbname, "-c", sql]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        except FileNotFoundError:
            raise RuntimeError("psql not found: install the PostgreSQL client to use --db postgres") from None
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"psql failed: {sql}: {e.stderr.strip()}") from None

    def create_database(self, prefix: str = "bench") -> str:
        """A new empty UTF-8/C-locale database (what Synapse insists on); returns its name."""
        name = f"{prefix}_{secrets.token_hex(5)}"
        self._psql(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' "
                   "TEMPLATE template0")
        return name

    def drop_database(self, name: str) -> None:
        self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------- running servers


@dataclass
class RunningServer:
    """A homeserver subprocess that answered /versions. ``stop()`` ends it and cleans up."""

    kind: str  # "whispr" or "synapse"
    base_url: str  # e.g. http://127.0.0.1:PORT
    server_name: str
    pid: int
    port: int
    data_dir: Path  # temporary; holds the config, the log and the SQLite file
    log_path: Path
    config_path: Path
    db_engine: DbEngine
    process: subprocess.Popen[bytes] = field(repr=False)
    cleanups: list[Callable[[], None]] = field(default_factory=list, repr=False)
    keep_data: bool = False

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu_seconds(self) -> float:
        """CPU seconds (user+system) of the server and any live worker processes it forked."""
        return _sum_over_tree(self.pid, cpu_seconds)

    def rss_kb(self, key: str = "VmRSS") -> int:
        """Resident memory in KiB over the process tree (``key="VmHWM"`` for peaks)."""
        return int(_sum_over_tree(self.pid, lambda p: rss_kb(p, key)))

    def log_tail(self, lines: int = 40) -> str:
        return _log_tail(self.log_path, lines)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (then SIGKILL after ``timeout``) the server's process group; run cleanups."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)  # own session: our child and its workers
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(5)
        while self.cleanups:
            try:
                self.cleanups.pop()()
            except Exception as e:  # cleanup must not hide the benchmark result
                print(f"warning: cleanup of {self.kind} failed: {e}", file=sys.stderr)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _launch(kind: str, cmd: list[str], cwd: Path, env: dict[str, str], config: dict[str, Any],
            tmp: Path, port: int, server_name: str, db_engine: DbEngine,
            cleanups: list[Callable[[], None]], startup_timeout: float, keep_data: bool) -> RunningServer:
    config_path = tmp / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = tmp / "server.log"
    with open(log_path, "ab") as log:
        # start_new_session: stop() can signal the whole group without touching anything else.
        process = subprocess.Popen(cmd + [str(config_path)], cwd=cwd, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    server = RunningServer(kind=kind, base_url=f"http://127.0.0.1:{port}", server_name=server_name,
                           pid=process.pid, port=port, data_dir=tmp, log_path=log_path,
                           config_path=config_path, db_engine=db_engine, process=process,
                           cleanups=cleanups, keep_data=keep_data)
    try:
        wait_ready(server.base_url, process, startup_timeout, log_path)
    except BaseException:
        server.stop()
        raise
    return server


def _prepare(kind: str, db: DbEngine, pg: PostgresAdmin | None, keep_data: bool
             ) -> tuple[Path, list[Callable[[], None]], str | None, PostgresAdmin | None]:
    tmp = Path(tempfile.mkdtemp(prefix=f"{kind}-bench-"))
    cleanups: list[Callable[[], None]] = []
    if not keep_data:
        cleanups.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    dbname: str | None = None
    if db == "postgres":
        admin = pg = pg or PostgresAdmin()
        try:
            name = dbname = admin.create_database(f"{kind}_bench")
        except BaseException:
            for c in reversed(cleanups):
                c()
            raise
        if not keep_data:
            cleanups.append(lambda: admin.drop_database(name))
    elif db != "sqlite":
        raise ValueError(f"unknown database engine {db!r}")
    return tmp, cleanups, dbname, pg


# --------------------------------------------------------------------------- Whispr


def whispr_config(*, server_name: str, port: int, data_dir: Path, db: DbEngine = "sqlite",
                  pg_url: str = "", argon2_opslimit: int = 1, argon2_memlimit_kib: int = 8192,
                  rate_limits: bool = False, log_level: str = "WARNING",
                  extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The YAML config (as a dict) the benchmarks run Whispr with: low hash cost, no limits."""
    database: dict[str, Any] = {"engine": "sqlite"} if db == "sqlite" else {"engine": "postgres", "url": pg_url}
    config: dict[str, Any] = {
        "server_name": server_name,
        "public_baseurl": f"http://127.0.0.1:{port}",
        "listen": {"host": "127.0.0.1", "port": port},
        "data_dir": str(data_dir),
        "log_level": log_level,
        "database": database,
        "registration": {"enabled": True, "require_email_verification": False},
        "passwords": {"argon2_opslimit": argon2_opslimit, "argon2_memlimit_kib": argon2_memlimit_kib},
        "rate_limits": {"enabled": rate_limits},
        "login": {"email_otp": "off"},
    }
    if _whispr_has_section("federation"):
        # Its listener takes the port in server_name (= the client port here) and would collide;
        # the client-API benchmarks do not federate. extra_config can turn it back on.
        config["federation"] = {"enabled": False}
    return deep_merge(config, extra)


def _whispr_has_section(name: str) -> bool:
    """Whether this checkout's Whispr config has a top-level section ``name`` (unknown keys are errors)."""
    try:
        import dataclasses

        from homeserver.config import Config
    except ImportError:
        return False
    return name in {f.name for f in dataclasses.fields(Config)}


def start_whispr(*, python: str | None = None, db: DbEngine = "sqlite", pg: PostgresAdmin | None = None,
                 port: int | None = None, server_name: str | None = None, argon2_opslimit: int = 1,
                 argon2_memlimit_kib: int = 8192, rate_limits: bool = False,
                 extra_config: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
                 startup_timeout: float = 60.0, keep_data: bool = False, repo: Path | None = None) -> RunningServer:
    """Run ``<python> -m homeserver --config FILE`` from the repository root (or another
    checkout, `repo`, to compare two versions) until it answers.

    ``python`` defaults to the interpreter running this code (the project venv).
    WHISPR_* variables of our own environment are not passed on (Whispr reads them as
    config overrides); give overrides in ``env`` or ``extra_config`` instead.
    """
    port = port or free_port()
    server_name = server_name or f"localhost:{port}"
    tmp, cleanups, dbname, pg = _prepare("whispr", db, pg, keep_data)
    config = whispr_config(server_name=server_name, port=port, data_dir=tmp / "data", db=db,
                           pg_url=pg.database_url(dbname) if pg and dbname else "",
                           argon2_opslimit=argon2_opslimit, argon2_memlimit_kib=argon2_memlimit_kib,
                           rate_limits=rate_limits, extra=extra_config)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("WHISPR_")}
    child_env.update(env or {})
    child_env["PYTHONUNBUFFERED"] = "1"
    cmd = [python or sys.executable, "-m", "homeserver", "--config"]
    return _launch("whispr", cmd, repo or REPO_ROOT, child_env, config, tmp, port, server_name, db,
                   cleanups, startup_timeout, keep_data)


# --------------------------------------------------------------------------- Synapse


def synapse_python(install: bool = True, need_postgres: bool = False) -> str:
    """An interpreter with matrix-synapse: $WHISPR_SYNAPSE_PYTHON, else bench/.venv-synapse.

    The venv is created by bench/setup_synapse.sh (pip install matrix-synapse==SYNAPSE_VERSION
    and psycopg2-binary) when it is missing and ``install`` is true.
    """
    python = os.environ.get("WHISPR_SYNAPSE_PYTHON")
    if not python:
        python = str(SYNAPSE_VENV / "bin" / "python")
        if not (SYNAPSE_VENV / f".installed-{SYNAPSE_VERSION}").exists():
            if not install:
                raise RuntimeError(f"{SYNAPSE_VENV} missing; run bench/setup_synapse.sh")
            print(f"installing matrix-synapse=={SYNAPSE_VERSION} into {SYNAPSE_VENV} ...", file=sys.stderr)
            env = dict(os.environ, SYNAPSE_VERSION=SYNAPSE_VERSION, SYNAPSE_VENV=str(SYNAPSE_VENV))
            subprocess.run(["bash", str(BENCH_DIR / "setup_synapse.sh")], check=True, env=env,
                           stdout=subprocess.DEVNULL)
    modules = "synapse, psycopg2" if need_postgres else "synapse"
    probe = subprocess.run([python, "-c", f"import {modules}; print(synapse.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        hint = " (pip install psycopg2-binary into it)" if need_postgres else ""
        raise RuntimeError(f"{python} cannot import {modules}{hint}: {probe.stderr.strip()[-300:]}")
    if probe.stdout.split()[:1] != [SYNAPSE_VERSION]:  # run from inside a git checkout it adds "(b=...)"
        print(f"warning: {python} has Synapse {probe.stdout.strip()}, not {SYNAPSE_VERSION}", file=sys.stderr)
    return python


def synapse_config(*, server_name: str, port: int, data_dir: Path, db: DbEngine = "sqlite",
                   pg: PostgresAdmin | None = None, dbname: str | None = None, bcrypt_rounds: int = 4,
                   extra: Mapping[str, Any] | None = None,
                   extra_listeners: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """homeserver.yaml (as a dict): plain-HTTP client listener, open registration, no limits."""
    if db == "sqlite":
        database: dict[str, Any] = {"name": "sqlite3", "args": {"database": str(data_dir / "homeserver.db")}}
    else:
        assert pg is not None and dbname is not None
        args: dict[str, Any] = {"user": pg.user, "host": pg.host, "port": pg.port, "database": dbname,
                                "cp_min": 5, "cp_max": 10}
        if pg.password:
            args["password"] = pg.password
        database = {"name": "psycopg2", "args": args}
    config: dict[str, Any] = {
        "server_name": server_name,
        "public_baseurl": f"http://127.0.0.1:{port}/",
        "pid_file": str(data_dir / "homeserver.pid"),
        "listeners": [{
            "port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
            "x_forwarded": False, "resources": [{"names": ["client"], "compress": False}],
        }, *(extra_listeners or [])],
        "database": database,
        "log_config": str(data_dir / "log.yaml"),
        "media_store_path": str(data_dir / "media_store"),
        "signing_key_path": str(data_dir / "signing.key"),  # generated on first start
        "macaroon_secret_key": secrets.token_urlsafe(32),
        "form_secret": secrets.token_urlsafe(32),
        "registration_shared_secret": secrets.token_urlsafe(32),
        "report_stats": False,
        "enable_metrics": False,
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "bcrypt_rounds": bcrypt_rounds,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "federation_domain_whitelist": [],
        "rc_message": _UNLIMITED,
        "rc_registration": _UNLIMITED,
        "rc_registration_token_validity": _UNLIMITED,
        "rc_login": {"address": _UNLIMITED, "account": _UNLIMITED, "failed_attempts": _UNLIMITED},
        "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
        "rc_joins_per_room": _UNLIMITED,
        "rc_invites": {"per_room": _UNLIMITED, "per_user": _UNLIMITED, "per_issuer": _UNLIMITED},
        "rc_3pid_validation": _UNLIMITED,
        "rc_third_party_invite": _UNLIMITED,
        "rc_media_create": _UNLIMITED,
        "rc_presence": {"per_user": _UNLIMITED},
        "rc_delayed_event_mgmt": _UNLIMITED,
        "rc_room_creation": _UNLIMITED,
        "rc_reports": _UNLIMITED,
        "rc_user_directory": _UNLIMITED,
        "rc_profile": _UNLIMITED,
        "rc_admin_redaction": _UNLIMITED,
        "rc_key_requests": _UNLIMITED,
        "rc_federation": {"window_size": 1000, "sleep_limit": 100000, "sleep_delay": 0,
                          "reject_limit": 100000, "concurrent": 100000},
    }
    return deep_merge(config, extra)


def _synapse_log_config(path: Path, level: str) -> dict[str, Any]:
    return {
        "version": 1,
        "formatters": {"precise": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "precise",
                              "filename": str(path), "encoding": "utf8"}},
        "root": {"level": level, "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


def start_synapse(*, python: str | None = None, db: DbEngine = "sqlite", pg: PostgresAdmin | None = None,
                  port: int | None = None, server_name: str | None = None, bcrypt_rounds: int = 4,
                  extra_config: Mapping[str, Any] | None = None, log_level: str = "WARNING",
                  startup_timeout: float = 120.0, keep_data: bool = False,
                  extra_listeners: list[dict[str, Any]] | None = None) -> RunningServer:
    """Run ``<python> -m synapse.app.homeserver --config-path FILE`` until it answers.

    ``python`` defaults to :func:`synapse_python` (which may install Synapse first).
    Synapse's own log (WARNING and up) goes to ``<data_dir>/homeserver.log``; its
    stdout/stderr to ``<data_dir>/server.log``.
    """
    python = python or synapse_python(need_postgres=db == "postgres")
    port = port or free_port()
    server_name = server_name or f"localhost:{port}"
    tmp, cleanups, dbname, pg = _prepare("synapse", db, pg, keep_data)
    config = synapse_config(server_name=server_name, port=port, data_dir=tmp, db=db, pg=pg,
                            dbname=dbname, bcrypt_rounds=bcrypt_rounds, extra=extra_config,
                            extra_listeners=extra_listeners)
    (tmp / "log.yaml").write_text(yaml.safe_dump(_synapse_log_config(tmp / "homeserver.log", log_level)))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # Synapse generates the missing signing key itself (--generate-missing-and-run is its default).
    cmd = [python, "-m", "synapse.app.homeserver", "--config-path"]
    return _launch("synapse", cmd, tmp, env, config, tmp, port, server_name, db,
                   cleanups, startup_timeout, keep_data)


# --------------------------------------------------------------------------- the floor


def start_floor(*, python: str | None = None, port: int | None = None, use_uvloop: bool = True,
                startup_timeout: float = 30.0) -> RunningServer:
    """Run bench/floor_app.py (an aiohttp app answering ``{}`` to everything) until it answers.

    ``python`` defaults to this interpreter (the project venv, which has aiohttp and uvloop).
    """
    port = port or free_port()
    tmp, cleanups, _, _ = _prepare("floor", "sqlite", None, False)
    config = {"host": "127.0.0.1", "port": port, "uvloop": use_uvloop}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [python or sys.executable, "-m", "bench.floor_app", "--config"]
    return _launch("floor", cmd, REPO_ROOT, env, config, tmp, port, f"localhost:{port}", "sqlite",
                   cleanups, startup_timeout, False)


def postgres_cpu_seconds() -> float:
    """CPU seconds of every process named ``postgres`` on this machine (server and backends).

    For --db postgres the homeserver's database work happens there; deltas over a phase
    only mean something while nothing else uses PostgreSQL.
    """
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "postgres":
                total += cpu_seconds(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return total
