"""`make deploy-check`: the shape of deploy/ brought up here, without containers.

Two `hitl-grpc serve` replicas on loopback ports share a fresh PostgreSQL database
(migrated once first, as the deployments' migrate step does) and one signing key from a
0600 file (the deployments' secret); Debian's nginx runs deploy/nginx/hitl-grpc.conf.template
in front of them. It checks, and exits 1 if any check fails:

- health (service "") through the balancer is SERVING;
- the bootstrap admin logs in through the balancer;
- SubmitDecision calls through the balancer land on both replicas, and each submit
  reaches a WatchPending watcher connected directly to the *other* replica.

Everything it started (nginx, the replicas, the database) is gone when it ends.
Usage: `python -m bench.deploy_check`.
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
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from string import Template
from typing import Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hitl.v1 import auth_pb2, auth_pb2_grpc, decision_pb2, decision_pb2_grpc

from bench.processes import ADMIN_PASSWORD, fresh_postgres, serve_subprocess
from tests.decisions_support import sample_request

TEMPLATE: Final = Path(__file__).resolve().parent.parent / "deploy/nginx/hitl-grpc.conf.template"
STEP_S: Final = 30.0
# Which replica nginx sent a call to, as initial metadata; only in this check's nginx.conf.
UPSTREAM_HEADER: Final = "x-check-upstream"
MAX_SUBMITS: Final = 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _nginx(replicas: list[str], workdir: Path) -> Iterator[str]:
    """nginx with the deployment's template over `replicas`; yields its address."""
    address = f"127.0.0.1:{_free_port()}"
    site = Template(TEMPLATE.read_text()).safe_substitute(
        HITL_REPLICA_A=replicas[0], HITL_REPLICA_B=replicas[1], HITL_BALANCER_LISTEN=address
    )
    (workdir / "hitl-grpc.conf").write_text(site)
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = " ".join(f"{kind}_temp_path {workdir}/{kind};" for kind in kinds)
    (workdir / "nginx.conf").write_text(
        f"worker_processes 1;\n"
        f"pid {workdir}/nginx.pid;\n"
        f"error_log {workdir}/error.log warn;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log {workdir}/access.log;\n"
        f"    {temp}\n"
        f"    add_header {UPSTREAM_HEADER} $upstream_addr always;\n"
        f"    include {workdir}/hitl-grpc.conf;\n"
        "}\n"
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    command = [nginx, "-p", str(workdir), "-c", str(workdir / "nginx.conf")]
    subprocess.run([*command, "-t", "-q"], check=True)
    proc = subprocess.Popen([*command, "-g", "daemon off;"])
    try:
        yield address
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful: open streams end, then it exits
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Watcher:
    """WatchPending on one replica directly, recording the analysis ids it is told of."""

    def __init__(self, address: str, token: str) -> None:
        self.address = address
        self.seen: set[str] = set()
        self.live = threading.Event()
        self.changed = threading.Condition()
        self.error: BaseException | None = None
        self._channel = grpc.insecure_channel(address)
        self._stream = decision_pb2_grpc.DecisionServiceStub(self._channel).WatchPending(
            decision_pb2.WatchPendingRequest(), metadata=(("authorization", f"Bearer {token}"),)
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self._stream:
                which = message.WhichOneof("event")
                if which == "snapshot_complete":
                    self.live.set()
                elif which == "added":
                    with self.changed:
                        self.seen.add(message.added.analysis_id)
                        self.changed.notify_all()
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.CANCELLED:
                self.error = exc
        finally:
            self.live.set()
            with self.changed:
                self.changed.notify_all()

    def wait_for(self, analysis_id: str) -> bool:
        with self.changed:
            return self.changed.wait_for(
                lambda: analysis_id in self.seen or self.error is not None, STEP_S
            ) and (analysis_id in self.seen)

    def close(self) -> None:
        self._stream.cancel()
        self._thread.join(STEP_S)
        self._channel.close()


def _check(balancer: str, replicas: list[str]) -> list[str]:
    failures: list[str] = []
    with grpc.insecure_channel(balancer) as channel, ExitStack() as stack:
        grpc.channel_ready_future(channel).result(timeout=STEP_S)
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=STEP_S, wait_for_ready=True
        )
        if health.status != health_pb2.HealthCheckResponse.SERVING:
            return [f"health through the balancer: {health.status}"]
        print("health through nginx: SERVING")
        token = (
            auth_pb2_grpc.AuthServiceStub(channel)
            .Login(auth_pb2.LoginRequest(username="admin", password=ADMIN_PASSWORD), timeout=30)
            .tokens.access_token
        )
        watchers = {address: Watcher(address, token) for address in replicas}
        for watcher in watchers.values():
            stack.callback(watcher.close)
            if not watcher.live.wait(STEP_S) or watcher.error is not None:
                return [f"watcher on {watcher.address} never went live: {watcher.error}"]
        decisions = decision_pb2_grpc.DecisionServiceStub(channel)
        handled: dict[str, list[str]] = {address: [] for address in replicas}
        for _ in range(MAX_SUBMITS):
            request = sample_request()
            _, call = decisions.SubmitDecision.with_call(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=STEP_S
            )
            upstream = dict(call.initial_metadata()).get(UPSTREAM_HEADER, "")
            if upstream not in handled:
                return [f"nginx answered from {upstream!r}, not one of {replicas}"]
            handled[upstream].append(request.analysis_id)
            if all(handled.values()):
                break
        print("submits through nginx by replica:", {k: len(v) for k, v in handled.items()})
        if not all(handled.values()):
            failures.append(f"nginx sent every submit to one replica: {handled}")
        for upstream, ids in handled.items():
            [other] = [address for address in replicas if address != upstream]
            for analysis_id in ids:
                if not watchers[other].wait_for(analysis_id):
                    failures.append(
                        f"{analysis_id}, submitted on {upstream}, never reached the watcher "
                        f"on {other}: {watchers[other].error}"
                    )
        if not failures:
            print("every submit reached the watcher on the other replica")
    return failures


def main() -> int:
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hitl-deploy-")))
        url = stack.enter_context(fresh_postgres(f"hitl_deploy_check_{os.getpid()}"))
        key = workdir / "signing-key"
        key.touch(mode=0o600)
        key.write_text(secrets.token_hex(32))
        env = {"HITL_DATABASE_URL": url, "HITL_JWT_SECRET_FILE": str(key)}
        subprocess.run(
            [sys.executable, "-m", "hitl_grpc.cli", "migrate"],
            env={**os.environ, **env},
            check=True,
            capture_output=True,
        )
        replicas: list[str] = [stack.enter_context(serve_subprocess(env)) for _ in "ab"]
        print("replicas:", replicas)
        balancer = stack.enter_context(_nginx(replicas, workdir))
        print("nginx:", balancer)
        failures = _check(balancer, replicas)
    for failure in failures:
        print(f"deploy check FAILED: {failure}", file=sys.stderr)
    if not failures:
        print("deploy check passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
