"""The black-box tier: the real `hitl-grpc serve` in a child process, driven by outside clients.

Nothing here shares the server's process or event loop: clients are sync grpc Python (one
channel per thread), the grpcurl binary and Node.js @grpc/grpc-js. Everything is synchronous.

- `Served.start(database_url, workdir, **env)` runs `hitl-grpc serve` with PYTHONFAULTHANDLER=1
  on that database, gRPC and metrics on 127.0.0.1:0, the admin password ADMIN_PASSWORD, and
  waits (with a deadline) for its "serving on host:port" line. The `served` fixture
  (tests/blackbox/conftest.py) does this on a fresh database of each backend and stops it after
  the test; `make_served(HITL_HEARTBEAT_S="1", ...)` starts more, or with other settings.
- `served.address`: "127.0.0.1:port". `served.channel()`: a new sync channel; give each thread
  its own.
- `served.admin_token()`: an access token for `admin`. `served.create_user(role)`: a new account
  created over the API by the admin, returns (username, password). `served.token(role)`: an
  access token for a new account with that role. `served.submit(metadata)`: a sample decision
  submitted over the API.
- `served.grpcurl(*args, token=..., data=...)`: runs the grpcurl binary against the server,
  `args` after the address ("list", "describe X", or a method).
- `served.node(script, *args)`: starts tests/blackbox/node/<script> with Node.js (HITL_ADDRESS
  and HITL_PROTOS set); `run.wait_for_line(prefix)` waits for a line it prints,
  `run.finish()` gives its exit code and stderr.
- `served.metrics()`: its Prometheus text; `served.wait_for_metrics(*samples)` waits (up to
  CALL_S) until every sample line is there, since a call is counted after its status is sent.
- `served.assert_alive()`: fails the test, with the server's stderr (faulthandler output
  included), if the server has exited. `served.stop()`: SIGTERM, then asserts a clean exit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Self

import grpc
import pytest
from hitl.v1 import access_pb2, auth_pb2, auth_pb2_grpc, decision_pb2, decision_pb2_grpc

from tests.children import SERVE, Lines
from tests.harness import Metadata, bearer
from tests.samples import sample_request

ADMIN_PASSWORD: Final = "blackbox-bootstrap-secret-42"
PASSWORD: Final = "a-long-blackbox-password-42"
JWT_SECRET: Final = "blackbox-signing-secret-of-at-least-32-bytes"
STARTUP_S: Final = 60.0
STOP_S: Final = 60.0
ABORT_S: Final = 10.0
# A loaded server sheds with UNAVAILABLE (retryable); submits are idempotent, so retry them.
SUBMIT_ATTEMPTS: Final = 5
CALL_S: Final = 20.0
NODE_DIR: Final = Path(__file__).parent / "node"
REPO: Final = Path(__file__).parents[2]
GRPCURL: Final = REPO / ".venv" / "bin" / "grpcurl"
PROTOS: Final = REPO / "protos"
SERVING: Final = "hitl-grpc serving on "
METRICS: Final = "hitl-grpc metrics on "
# The end of stderr is where faulthandler writes; the rest is access-log noise.
STDERR_TAIL_CHARS: Final = 12_000


def _env(database_url: str, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HITL_")}
    env.update(
        {
            "PYTHONFAULTHANDLER": "1",
            "HITL_DATABASE_URL": database_url,
            "HITL_LISTEN": "127.0.0.1:0",
            "HITL_METRICS_LISTEN": "127.0.0.1:0",
            "HITL_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "HITL_JWT_SECRET": JWT_SECRET,
            # Cheap hashes: the tier measures crashes and races, not argon2.
            "HITL_PASSWORD_MEMORY_KIB": "1024",
            "HITL_PASSWORD_TIME_COST": "1",
            **extra,
        }
    )
    return env


class Served:
    """A running `hitl-grpc serve` child process."""

    def __init__(self, proc: subprocess.Popen[str], stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self.address = ""
        self.metrics_address = ""
        assert proc.stdout is not None
        self.lines = Lines(proc.stdout)
        self._admin_token = ""
        self._death_reported = False
        self._stopped = False

    @classmethod
    def start(cls, database_url: str, workdir: Path, **env: str) -> Self:
        """Starts the server and waits for it to serve."""
        stderr_path = workdir / f"serve-{uuid.uuid4().hex[:6]}.stderr"
        with stderr_path.open("w") as stderr:
            proc = subprocess.Popen(
                SERVE,
                cwd=workdir,
                env=_env(database_url, env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        served = cls(proc, stderr_path)
        try:
            served.metrics_address = served.wait_for_line(METRICS)
            served.address = served.wait_for_line(SERVING)
        except BaseException:
            served.proc.kill()
            served.proc.wait()
            raise
        return served

    def wait_for_line(self, prefix: str, timeout_s: float = STARTUP_S) -> str:
        """The rest of the next stdout line starting with `prefix`."""
        try:
            rest = self.lines.after(prefix, timeout_s)
        except TimeoutError as err:
            pytest.fail(f"{err}\n{self.stderr_tail()}")
        if rest is None:
            pytest.fail(f"serve exited with {self.proc.wait()}\n{self.stderr_tail()}")
        return rest

    def stderr_tail(self) -> str:
        """What the server wrote on stderr, faulthandler's dump first if there is one."""
        text = self.stderr_path.read_text(errors="replace")
        fatal = text.find("Fatal Python error")
        if fatal >= 0:
            return text[fatal:][:STDERR_TAIL_CHARS]
        return text[-STDERR_TAIL_CHARS:]

    def assert_alive(self) -> None:
        """Fails the test with the server's stderr if it has exited."""
        code = self.proc.poll()
        if code is not None:
            self._death_reported = True
            pytest.fail(f"hitl-grpc serve died with exit code {code}:\n{self.stderr_tail()}")

    def stop(self) -> None:
        """SIGTERM; the server must have been alive and must exit 0 within STOP_S (once)."""
        if self._death_reported or self._stopped:
            return  # the test already failed with the server's stderr, or stopped it
        self.assert_alive()
        self._stopped = True
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            # SIGABRT makes faulthandler dump every thread: the report shows where it hangs.
            self.proc.send_signal(signal.SIGABRT)
            try:
                self.proc.wait(ABORT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            pytest.fail(f"serve did not exit within {STOP_S} s of SIGTERM\n{self.stderr_tail()}")
        if code != 0:
            pytest.fail(f"serve exited with {code} after SIGTERM:\n{self.stderr_tail()}")

    def metrics(self) -> str:
        """The Prometheus text the server exposes now."""
        url = f"http://{self.metrics_address}/metrics"
        with urllib.request.urlopen(url, timeout=CALL_S) as reply:
            return str(reply.read().decode())

    def wait_for_metrics(self, *samples: str) -> str:
        """The metrics once they hold every sample line, or as they are after CALL_S."""
        # The client has its status before the server's access log has counted the call.
        deadline = time.monotonic() + CALL_S
        while True:
            body = self.metrics()
            if all(s in body for s in samples) or time.monotonic() > deadline:
                return body
            time.sleep(0.05)

    def log_entries(self, matching: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """The JSON log lines on stderr that `matching` accepts, once there is one (or the
        lines as they are after CALL_S: log lines are written by a thread of their own)."""
        deadline = time.monotonic() + CALL_S
        while True:
            found = self.log_entries_written(matching)
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def log_entries_written(
        self, matching: Callable[[dict[str, Any]], bool]
    ) -> list[dict[str, Any]]:
        """The JSON log lines on stderr that `matching` accepts, as written so far."""
        # Only whole lines: the last piece may still be being written.
        lines = self.stderr_path.read_text(errors="replace").split("\n")[:-1]
        entries = [json.loads(line) for line in lines if line.startswith("{")]
        return [e for e in entries if matching(e)]

    def channel(self) -> grpc.Channel:
        """A new sync channel to the server (one per thread)."""
        return grpc.insecure_channel(self.address)

    def login(self, username: str, password: str) -> str:
        """An access token for that account, over a channel of its own."""
        with self.channel() as channel:
            reply = auth_pb2_grpc.AuthServiceStub(channel).Login(
                auth_pb2.LoginRequest(username=username, password=password), timeout=CALL_S
            )
        return reply.tokens.access_token

    def admin_token(self) -> str:
        """An access token for the bootstrap admin."""
        if not self._admin_token:
            self._admin_token = self.login("admin", ADMIN_PASSWORD)
        return self._admin_token

    def admin(self) -> Metadata:
        """Call metadata for the admin."""
        return bearer(self.admin_token())

    def create_user(
        self, role: access_pb2.Role.ValueType, username: str | None = None
    ) -> tuple[str, str]:
        """A new account with this role, created over the API by the admin."""
        name = username or f"bb-{uuid.uuid4().hex[:10]}"
        with self.channel() as channel:
            auth_pb2_grpc.AuthServiceStub(channel).CreateUser(
                auth_pb2.CreateUserRequest(username=name, password=PASSWORD, role=role),
                metadata=self.admin(),
                timeout=CALL_S,
            )
        return name, PASSWORD

    def token(self, role: access_pb2.Role.ValueType) -> str:
        """An access token for a new account with this role."""
        return self.login(*self.create_user(role))

    def submit(self, metadata: Metadata, **fields: Any) -> decision_pb2.Decision:
        """Submits a valid sample decision (fields override it) and returns it as stored."""
        request = sample_request(**fields)
        with self.channel() as channel:
            stub = decision_pb2_grpc.DecisionServiceStub(channel)
            attempts_left = SUBMIT_ATTEMPTS
            while True:
                try:
                    reply = stub.SubmitDecision(request, metadata=metadata, timeout=CALL_S)
                    return reply.decision
                except grpc.RpcError as err:
                    attempts_left -= 1
                    if err.code() is not grpc.StatusCode.UNAVAILABLE or not attempts_left:
                        raise

    def grpcurl(
        self, *args: str, token: str | None = None, data: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Runs `grpcurl -plaintext [auth] [-d data] <address> <args>` (list, describe, method)."""
        command = [str(GRPCURL), "-plaintext", "-max-time", str(CALL_S)]
        if token:
            command += ["-H", f"authorization: Bearer {token}"]
        if data is not None:
            command += ["-d", data]
        return subprocess.run(
            [*command, self.address, *args],
            capture_output=True,
            text=True,
            timeout=CALL_S * 2,
            check=False,
        )

    def node(self, script: str, *args: str) -> NodeRun:
        """Starts tests/blackbox/node/<script> with HITL_ADDRESS and HITL_PROTOS set."""
        node = shutil.which("node")
        if node is None or not (NODE_DIR / "node_modules").is_dir():
            message = "node or tests/blackbox/node/node_modules missing: run 'make node-deps'"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
        proc = subprocess.Popen(
            [node, str(NODE_DIR / script), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "HITL_ADDRESS": self.address, "HITL_PROTOS": str(PROTOS)},
        )
        return NodeRun(proc)


class NodeRun:
    """A Node.js client process; its stdout is read line by line, its stderr at the end."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        assert proc.stdout is not None
        self.lines = Lines(proc.stdout)

    def wait_for_line(self, prefix: str, timeout_s: float = CALL_S) -> str:
        """The rest of the next stdout line starting with `prefix`."""
        try:
            rest = self.lines.after(prefix, timeout_s)
        except TimeoutError as err:
            self.proc.kill()
            pytest.fail(f"node: {err}\n{self.finish()[1]}")
        if rest is None:
            pytest.fail(f"node exited before {prefix!r}:\n{self.finish()[1]}")
        return rest

    def finish(self, timeout_s: float = CALL_S * 3) -> tuple[int, str]:
        """Its exit code and stderr once it has ended (killed after `timeout_s`)."""
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()
