"""`make fuzz`: schemathesis over the Matrix spec's OpenAPI definitions against a running Whispr.

The Client-Server and Server-Server definitions (data/api/{client-server,server-server}/*.yaml
of the matrix-org/matrix-spec repository, not committed; MATRIX_SPEC_DIR) are bundled into one
OpenAPI document per API: every `$ref` (files of shared schemas, event schemas) resolved inline
and each file's paths put under its basePath. A Whispr (SQLite) and a hand-built peer server
(its ed25519 key served over TLS on loopback) are started; schemathesis generates requests for
every operation, valid and invalid ones, with a registered user's access token on the
Client-Server API and X-Matrix signatures of the peer on the Server-Server API.

Every answer must be a success, or a JSON object with string `errcode` and `error` (a UIA 401
with `flows` too), and never a 500. The run is bounded by examples per operation and a time
limit; it prints the figures (requests sent, 500s, non-Matrix error bodies), writes them with
every problem to .fuzz/report.json, and exits 1 when there is any problem.

With `--conformance` (`make conform`) each answer is also checked against the spec's documented
responses: a 2xx body must match the response schema of its status (schemathesis's
`response_schema_conformance`), and the status must be one the operation documents
(`status_code_conformance`; only for valid requests, since the spec does not list every 400 a
malformed one may earn). Besides the generated requests, this mode sends each operation's request
examples from the spec, with the real identifiers in their paths, since random requests seldom
earn a 2xx. Mismatches are grouped by operation, check and message, counted, and
written with one sample request each under `mismatches` in the report; they fail the run too.

The Makefile runs this in a network namespace of its own (`unshare -rn`) with only loopback, so
that generated server names can never make the fuzzed server contact another host.

    python -m fuzz.spec_fuzz --spec .fuzz/matrix-spec --examples 20 --time-limit 600
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import requests
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

import schemathesis
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

REPO_ROOT = Path(__file__).resolve().parent.parent
APIS = ("client-server", "server-server")
REQUEST_TIMEOUT_S = 5.0
# Operations that may hold a request open by design; a timeout there is no finding.
LONG_POLL = ("/sync", "/events", "/sync/stream")
# Pages a person's browser opens (the link in a verification mail): they answer in plain text.
HUMAN_PAGES = ("/email/validate",)


# ---- bundling the spec --------------------------------------------------------------------------

class Bundler:
    """Resolves `$ref`s across the spec's YAML/JSON files into one self-contained tree."""

    def __init__(self) -> None:
        self._files: dict[Path, Any] = {}

    def load(self, path: Path) -> Any:
        path = path.resolve()
        if path not in self._files:
            with path.open(encoding="utf-8") as stream:
                self._files[path] = yaml.safe_load(stream)
        return self._files[path]

    def resolve(self, node: Any, here: Path, seen: frozenset[tuple[Path, str]] = frozenset()) -> Any:
        if isinstance(node, list):
            return [self.resolve(item, here, seen) for item in node]
        if not isinstance(node, dict):
            return node
        if isinstance(node.get("$ref"), str):
            ref_file, _, pointer = node["$ref"].partition("#")
            target_path = (here.parent / ref_file).resolve() if ref_file else here
            key = (target_path, pointer)
            if key in seen:
                return {}  # a recursive schema: leave the inner level open
            target = self.load(target_path)
            for part in filter(None, pointer.split("/")):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            resolved = self.resolve(target, target_path, seen | {key})
            siblings = {k: self.resolve(v, here, seen) for k, v in node.items() if k != "$ref"}
            if siblings and isinstance(resolved, dict):
                return {**resolved, **siblings}
            return resolved
        # Prose is dropped to keep the bundle small; a *property* called "description" is a dict.
        return {k: self.resolve(v, here, seen) for k, v in node.items()
                if not (k in ("description", "summary") and isinstance(v, str))}


def base_path(doc: dict[str, Any]) -> str:
    for server in doc.get("servers") or []:
        default = ((server.get("variables") or {}).get("basePath") or {}).get("default")
        if default:
            return str(default).rstrip("/")
    return ""


def bundle_api(spec_dir: Path, api: str) -> dict[str, Any]:
    """One OpenAPI 3.1 document with every operation of `api` under its full path."""
    bundler = Bundler()
    paths: dict[str, Any] = {}
    schemes: dict[str, Any] = {}
    for path in sorted((spec_dir / "data" / "api" / api).glob("*.yaml")):
        doc = bundler.resolve(bundler.load(path), path.resolve())
        prefix = base_path(doc)
        for route, item in (doc.get("paths") or {}).items():
            # The spec spells a few paths with a trailing space ("/rooms/{roomId}/invite ", "/events ")
            # so that two files may each describe one: sent as is they hit no route. Stripped here,
            # the first file to describe a method keeps it.
            for key, value in item.items():
                paths.setdefault(prefix + route.strip(), {}).setdefault(key, value)
        schemes.update((doc.get("components") or {}).get("securitySchemes") or {})
    if not paths:
        raise SystemExit(f"no OpenAPI files under {spec_dir / 'data' / 'api' / api}")
    return {"openapi": "3.1.0", "info": {"title": f"Matrix {api} API", "version": "spec"},
            "paths": paths, "components": {"securitySchemes": schemes}}


# ---- the servers --------------------------------------------------------------------------------

class PeerThread:
    """The tests' hand-built peer (tests/test_federation_forged.py) on an event loop of its own."""

    def __init__(self, tmp: Path) -> None:
        from tests.test_federation_forged import Peer

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.peer = Peer(tmp)
        self.run(self.peer.start())

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def close(self) -> None:
        self.run(self.peer.close())
        self.loop.call_soon_threadsafe(self.loop.stop)


class XMatrixAuth(requests.auth.AuthBase):
    """Signs each prepared request as the peer: the URI and body exactly as they go on the wire."""

    def __init__(self, peer: Any, destination: str) -> None:
        self.peer, self.destination = peer, destination

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        from federation.request_auth import sign_request

        content = None
        if request.body:
            try:
                content = json.loads(request.body)
            except ValueError:
                content = None  # the server refuses a body that is not JSON before the signature
        try:
            header = sign_request(self.peer.name, self.destination, request.method or "GET", request.path_url,
                                  content, self.peer.key)
        except (TypeError, ValueError):  # not encodable as canonical JSON: sign without the body
            header = sign_request(self.peer.name, self.destination, request.method or "GET", request.path_url,
                                  None, self.peer.key)
        request.headers["Authorization"] = header
        return request


@dataclass
class Fixtures:
    """Real identifiers on the running server, given to half the generated requests' path parameters."""

    values: dict[str, str]

    def for_operation(self, operation: Any) -> dict[str, str]:
        names = [p.name for p in operation.path_parameters]
        return {n: self.values[n] for n in names if n in self.values}


def register(base_url: str, username: str) -> dict[str, Any]:
    v3 = base_url + "/_matrix/client/v3"
    body = {"username": username, "password": "fuzzing password"}
    first = requests.post(v3 + "/register", json=body, timeout=30).json()
    return requests.post(v3 + "/register", json={**body, "auth": {"type": "m.login.dummy",
                                                                   "session": first["session"]}}, timeout=30).json()


def keep_token(base_url: str, session: requests.Session, fixtures: Fixtures) -> Callable[[], None]:
    """A check, run after each operation: when the fuzz spent the token (logout...), carry on as a
    new account in the same room."""
    accounts = iter(range(1, 1_000_000))

    def check() -> None:
        who = session.get(base_url + "/_matrix/client/v3/account/whoami", timeout=30)
        if who.status_code == 401:
            reg = register(base_url, f"fuzzer{next(accounts)}")
            session.headers["Authorization"] = f"Bearer {reg['access_token']}"
            session.post(f"{base_url}/_matrix/client/v3/join/{fixtures.values['roomId']}", json={}, timeout=30)
            fixtures.values.update(userId=reg["user_id"], deviceId=reg["device_id"])

    return check


def prepare(base_url: str, server_name: str, peer: PeerThread) -> tuple[str, Fixtures]:
    """A user with a token, a room (with the peer joined), a message and an upload."""
    v3 = base_url + "/_matrix/client/v3"
    reg = register(base_url, "fuzzer")
    h = {"Authorization": f"Bearer {reg['access_token']}"}
    room = requests.post(v3 + "/createRoom", json={"preset": "public_chat", "room_version": "10",
                                                   "room_alias_name": "fuzz"}, headers=h, timeout=30).json()["room_id"]
    event = requests.put(f"{v3}/rooms/{room}/send/m.room.message/t1", json={"msgtype": "m.text", "body": "hi"},
                         headers=h, timeout=30).json()["event_id"]
    media = requests.post(base_url + "/_matrix/media/v3/upload", data=b"GIF89a",
                          headers={**h, "Content-Type": "image/gif"}, timeout=30).json()["content_uri"]
    peer_user = f"@mallory:{peer.peer.name}"
    peer.run(peer.peer.join(server_name, room, peer_user))
    values = {"roomId": room, "roomIdOrAlias": room, "userId": reg["user_id"], "eventId": event,
              "serverName": server_name, "origin": peer.peer.name, "mediaId": media.rsplit("/", 1)[1],
              "deviceId": reg["device_id"], "roomAlias": f"#fuzz:{server_name}", "txnId": "fuzz"}
    return reg["access_token"], Fixtures(values)


# ---- running ------------------------------------------------------------------------------------

@dataclass
class Figures:
    sent: int = 0
    server_errors: int = 0
    non_matrix: int = 0
    hangs: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    problems: list[dict[str, Any]] = field(default_factory=list)
    # --conformance: "operation | check | first line of the message" -> count, and one sample each
    mismatch_counts: Counter[str] = field(default_factory=Counter)
    mismatches: dict[str, dict[str, Any]] = field(default_factory=dict)


def is_matrix_error(status: int, doc: Any) -> bool:
    if not isinstance(doc, dict):
        return False
    if isinstance(doc.get("errcode"), str) and isinstance(doc.get("error"), str):
        return True
    return status == 401 and isinstance(doc.get("flows"), list)


def judge(case: Any, response: requests.Response, figures: Figures) -> None:
    figures.statuses[response.status_code] += 1
    if response.status_code < 400 or case.path.endswith(HUMAN_PAGES):
        return
    try:
        doc = response.json()
    except ValueError:
        doc = None
    problem = None
    if response.status_code == 500:
        figures.server_errors += 1
        problem = "500"
    if not is_matrix_error(response.status_code, doc):
        figures.non_matrix += 1
        problem = "non-Matrix error body"
    if problem:
        request = response.request
        body = request.body.decode("utf-8", "replace") if isinstance(request.body, bytes) else request.body
        figures.problems.append({"problem": problem, "method": request.method, "url": request.url,
                                 "body": (body or "")[:5000], "status": response.status_code,
                                 "response": response.text[:300]})


def conform(case: Any, response: Any, mode: GenerationMode, figures: Figures) -> None:
    """Checks the answer against the operation's documented responses (see the module docstring)."""
    checks = []
    if 200 <= response.status_code < 300:
        checks.append(response_schema_conformance)
    if mode is GenerationMode.POSITIVE:
        checks.append(status_code_conformance)
    if not checks:
        return
    try:
        case.validate_response(response, checks=checks)
    except FailureGroup as group:
        failures = list(group.exceptions)
    except AssertionError as e:  # one failure, not grouped
        failures = [e]
    else:
        return
    for failure in failures:
        title = getattr(failure, "title", type(failure).__name__)
        message = str(getattr(failure, "message", failure)).strip()
        key = f"{case.operation.label} | {title} | {message.splitlines()[0][:160] if message else ''}"
        figures.mismatch_counts[key] += 1
        if key not in figures.mismatches:
            request = response.request
            body = request.body.decode("utf-8", "replace") if isinstance(request.body, bytes) else request.body
            figures.mismatches[key] = {"method": request.method, "url": request.url, "body": (body or "")[:2000],
                                       "status": response.status_code, "message": message[:2000],
                                       "response": response.text[:2000]}


def with_fixtures(case: Any, fixed: dict[str, str]) -> Any:
    if case.path_parameters is not None:
        case.path_parameters.update(fixed)
    return case


def fuzz_api(schema: Any, base_url: str, session: requests.Session, fixtures: Fixtures, examples: int,
             deadline: float, figures: Figures, log: Callable[[str], None],
             after_operation: Callable[[], None] = lambda: None, conformance: bool = False) -> None:
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation is None or time.monotonic() > deadline:
            continue
        fixed = fixtures.for_operation(operation)
        plans = [(mode, params) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
                 for params in ([None, fixed] if fixed else [None])]
        per_plan = max(1, examples // len(plans))
        before = figures.sent
        strategies: list[tuple[GenerationMode, Any, int]] = []
        if conformance:
            # The spec's own request examples, on the server's real identifiers: valid requests that
            # reach the 2xx answers random ones seldom get.
            try:
                strategies += [(GenerationMode.POSITIVE, example.map(partial(with_fixtures, fixed=fixed)), 1)
                               for example in operation.get_strategies_from_examples()]
            except Exception as e:  # noqa: BLE001 - an example the spec spells wrongly must not end the run
                log(f"  {operation.label}: no examples ({type(e).__name__})")
        for mode, params in plans:
            try:
                strategies.append((mode, operation.as_strategy(generation_mode=mode, path_parameters=params),
                                   per_plan))
            except Exception as e:  # noqa: BLE001 - the spec may hold schemas that cannot be negated
                log(f"  {operation.label}: no {mode.value} strategy ({type(e).__name__})")
        for mode, strategy, count in strategies:

            @settings(max_examples=count, deadline=None, database=None, derandomize=True,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @given(strategy)
            def send(case: Any) -> None:
                if time.monotonic() > deadline:
                    return
                figures.sent += 1
                try:
                    response = case.call(base_url=base_url, session=session, timeout=REQUEST_TIMEOUT_S, verify=False)
                except requests.Timeout:
                    if not case.path.endswith(LONG_POLL):
                        figures.hangs += 1
                        figures.problems.append({"problem": "no answer", "method": case.method, "url": case.path})
                    return
                except requests.RequestException as e:
                    figures.problems.append({"problem": f"transport: {e}", "method": case.method,
                                             "url": case.path})
                    return
                judge(case, response, figures)
                if conformance:
                    conform(case, response, mode, figures)  # noqa: B023 - send() runs in this iteration

            try:
                send()
            except Unsatisfiable:
                pass  # nothing to make invalid (an operation without parameters or body)
            except Exception as e:  # noqa: BLE001 - a generation error of one operation must not end the run
                log(f"  {operation.label}: generation failed ({type(e).__name__}: {str(e)[:120]})")
        log(f"  {operation.label}: {figures.sent - before} requests")
        after_operation()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=REPO_ROOT / ".fuzz" / "matrix-spec",
                        help="a checkout of matrix-org/matrix-spec (its data/ folder is enough)")
    parser.add_argument("--examples", type=int, default=20, help="generated requests per operation")
    parser.add_argument("--time-limit", type=float, default=900, help="seconds for the whole run")
    parser.add_argument("--api", choices=APIS, action="append", help="only this API (repeatable)")
    parser.add_argument("--report", type=Path, default=REPO_ROOT / ".fuzz" / "report.json")
    parser.add_argument("--conformance", action="store_true",
                        help="also check answers against the spec's documented responses (schemas, statuses)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")  # self-signed TLS of the federation listener, schema warnings
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the server below is stopped too

    from bench.servers import free_port, start_whispr

    def log(message: str) -> None:
        print(message, flush=True)

    port = free_port()
    server_name = f"127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="whispr-fuzz-"))
    peer = PeerThread(tmp)
    server = start_whispr(server_name=server_name, extra_config={"federation": {
        "enabled": True, "verify_tls": False, "allowed_private_ranges": ["127.0.0.0/8"]}})
    figures_by_api: dict[str, Figures] = {}
    try:
        token, fixtures = prepare(server.base_url, server_name, peer)
        deadline = time.monotonic() + args.time_limit
        for api in args.api or APIS:
            schema = schemathesis.openapi.from_dict(bundle_api(args.spec, api))
            session = requests.Session()
            session.verify = False
            if api == "client-server":
                base_url = server.base_url
                session.headers["Authorization"] = f"Bearer {token}"
            else:
                base_url = f"https://{server_name}"
                session.auth = XMatrixAuth(peer.peer, server_name)
            figures = figures_by_api[api] = Figures()
            log(f"{api}: fuzzing {base_url}")
            after = keep_token(base_url, session, fixtures) if api == "client-server" else (lambda: None)
            fuzz_api(schema, base_url, session, fixtures, args.examples, deadline, figures, log, after,
                     args.conformance)
        if not server.alive():
            log("the server died during the run:\n" + server.log_tail())
    finally:
        server.stop()
        peer.close()
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps({api: {**asdict(f), "statuses": dict(f.statuses),
                                             "mismatch_counts": dict(f.mismatch_counts.most_common())}
                                       for api, f in figures_by_api.items()}, indent=1))
    failed = False
    for api, f in figures_by_api.items():
        log(f"{api}: {f.sent} requests sent, {f.server_errors} 500s, {f.non_matrix} non-Matrix error bodies, "
            f"{f.hangs} without an answer; statuses {dict(sorted(f.statuses.items()))}")
        for problem in f.problems[:20]:
            log(f"  {problem}")
        if args.conformance:
            log(f"{api}: {len(f.mismatch_counts)} distinct mismatches with the spec's responses "
                f"({sum(f.mismatch_counts.values())} answers)")
            for key, count in f.mismatch_counts.most_common():
                log(f"  {count:5d} {key}")
        failed = failed or bool(f.problems) or bool(f.mismatch_counts)
    log(f"report: {args.report}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
