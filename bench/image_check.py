"""`make image-check`: runs the image `make image` built and talks to it from outside.

With docker, `docker run` publishes the gRPC port on loopback and the image's own
HEALTHCHECK must report healthy. Without a daemon, `buildah run --isolation chroot`
runs the image's entrypoint and command as its user, on the host's network, with
HITL_LISTEN and HITL_METRICS_LISTEN moved to free loopback ports; the HEALTHCHECK
command then runs inside the container, as the engine would run it. Either way it checks,
from outside: the gRPC health protocol says SERVING; the bootstrap admin can log in
and GetCurrentUser names it; the state volume holds the database 0600 and its
directory 0700, owned by 10001. Exits 1 on any failure.

Usage: `python -m bench.image_check [--builder docker|buildah] [--image NAME]`
(default: what `make image` recorded in .tools/image).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hitl.v1 import auth_pb2, auth_pb2_grpc

from bench.processes import ADMIN_PASSWORD

BUILDAH: Final = ["buildah", "--storage-driver", "vfs"]
STARTUP_S: Final = 60.0
UID: Final = 10001


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(args: list[str]) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


def _serving(address: str) -> None:
    """Waits (up to STARTUP_S) for the channel, then asks health once."""
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=STARTUP_S)
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10, wait_for_ready=True
        )
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise AssertionError(f"health from outside: {reply.status}")
    print(f"health from outside the container: SERVING ({address})")


def _admin_rpc(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        token = auth.Login(
            auth_pb2.LoginRequest(username="admin", password=ADMIN_PASSWORD), timeout=30
        ).tokens.access_token
        user = auth.GetCurrentUser(
            auth_pb2.GetCurrentUserRequest(),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        ).user
    if user.username != "admin":
        raise AssertionError(f"GetCurrentUser answered {user.username!r}")
    print("Login and GetCurrentUser as the bootstrap admin: ok")


def _check_state(state: Path) -> None:
    """The volume as the server left it: owner-only, owned by the image's user."""
    found = {
        path.name: (stat.S_IMODE(path.stat().st_mode), path.stat().st_uid)
        for path in [state, *sorted(state.iterdir())]
    }
    expected_db = {"hitl.db", "hitl.db.jwt-key"}
    if not expected_db <= found.keys():
        raise AssertionError(f"state volume holds {sorted(found)}")
    wrong = {
        name: (oct(mode), uid)
        for name, (mode, uid) in found.items()
        if uid != UID or mode != (0o700 if name == state.name else 0o600)
    }
    if wrong:
        raise AssertionError(f"state files not owner-only or not owned by {UID}: {wrong}")
    print(f"state volume: {sorted(found)} all owner-only, owned by {UID}")


def _state_dir(workdir: Path) -> Path:
    state = workdir / "state"
    state.mkdir(mode=0o700)
    os.chown(state, UID, UID)
    return state


def _server_pid(root: int) -> int:
    """The container's server process: what an engine's SIGTERM reaches (buildah run kills)."""
    pending = [root]
    while pending:
        pid = pending.pop()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if pid != root and cmdline[1:3] == [b"/opt/hitl/bin/hitl-grpc", b"serve"]:
            return pid
        for task in Path(f"/proc/{pid}/task").iterdir():
            pending += [int(child) for child in (task / "children").read_text().split()]
    raise AssertionError("no hitl-grpc serve process under buildah run")


@contextmanager
def _buildah(image: str, workdir: Path) -> Iterator[tuple[str, list[str]]]:
    """The image's entrypoint and command in a chroot container; yields (address, exec)."""
    config = json.loads(_run([*BUILDAH, "inspect", "--type", "image", image]))["Docker"]["config"]
    container = _run([*BUILDAH, "from", "--pull-never", image])
    try:
        port, metrics = _free_port(), _free_port()
        address = f"127.0.0.1:{port}"
        env = [
            f"HITL_LISTEN={address}",
            f"HITL_METRICS_LISTEN=127.0.0.1:{metrics}",
            f"HITL_BOOTSTRAP_ADMIN_PASSWORD={ADMIN_PASSWORD}",
        ]
        state = _state_dir(workdir)
        run = [*BUILDAH, "run", "--isolation", "chroot", "--user", config["User"]]
        run += [arg for pair in env for arg in ("--env", pair)]
        run += ["--volume", f"{state}:/var/lib/hitl", "--workingdir", config["WorkingDir"]]
        with open(workdir / "serve.log", "wb") as log:
            proc = subprocess.Popen(
                [*run, container, "--", *config["Entrypoint"], *config["Cmd"]],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            health = config["Healthcheck"]["Test"]
            assert health[0] == "CMD", health
            yield address, [*run, container, "--", *health[1:]]
        finally:
            try:
                os.kill(_server_pid(proc.pid), signal.SIGTERM)
            except (AssertionError, FileNotFoundError):
                proc.kill()  # it never started, or already ended
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError("the container ignored SIGTERM") from None
            print((workdir / "serve.log").read_text(errors="replace")[-1500:])
            if code != 0:
                raise AssertionError(f"the container exited {code} on SIGTERM")
        _check_state(state)
    finally:
        _run([*BUILDAH, "rm", container])


@contextmanager
def _docker(image: str, workdir: Path) -> Iterator[tuple[str, list[str]]]:
    state = _state_dir(workdir)
    name = f"hitl-image-check-{os.getpid()}"
    _run(
        [
            "docker", "run", "--detach", "--name", name,
            "--publish", "127.0.0.1::50051",
            "--volume", f"{state}:/var/lib/hitl",
            "--env", f"HITL_BOOTSTRAP_ADMIN_PASSWORD={ADMIN_PASSWORD}",
            "--health-interval", "1s", "--health-start-period", "30s",
            image,
        ]
    )  # fmt: skip
    try:
        published = _run(["docker", "port", name, "50051/tcp"]).splitlines()[0]
        yield published, ["docker", "exec", name, "hitl-grpc", "health", "--timeout", "3"]
        deadline = time.monotonic() + STARTUP_S
        status = ""
        while time.monotonic() < deadline and status != "healthy":
            status = _run(["docker", "inspect", "--format", "{{.State.Health.Status}}", name])
            if status == "unhealthy":
                break
            time.sleep(1)  # the engine's own probe interval
        if status != "healthy":
            raise AssertionError(f"docker reports the container {status}")
        print("docker HEALTHCHECK: healthy")
        subprocess.run(["docker", "stop", "--time", "20", name], check=True)
        _check_state(state)
    finally:
        subprocess.run(["docker", "rm", "--force", name], check=False, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builder", choices=["docker", "buildah"])
    parser.add_argument("--image")
    args = parser.parse_args(argv)
    builder, image = args.builder, args.image
    if builder is None or image is None:
        recorded = Path(".tools/image")
        if not recorded.exists():
            print("no image recorded in .tools/image: run 'make image' first", file=sys.stderr)
            return 1
        builder, image = recorded.read_text().split()
    if shutil.which(builder) is None:
        print(f"{builder} is not installed", file=sys.stderr)
        return 1
    run = _docker if builder == "docker" else _buildah
    with tempfile.TemporaryDirectory(prefix="hitl-image-check-") as tmp:
        os.chmod(tmp, 0o755)  # the container's user reaches its volume through it
        try:
            with run(image, Path(tmp)) as (address, health_command):
                _serving(address)
                inside = subprocess.run(health_command, capture_output=True, text=True)
                if inside.returncode != 0:
                    raise AssertionError(f"the HEALTHCHECK command failed: {inside}")
                print(f"HEALTHCHECK command inside the container: {inside.stdout.strip()}")
                _admin_rpc(address)
        except (AssertionError, subprocess.CalledProcessError, grpc.RpcError) as exc:
            print(f"image check FAILED: {exc}", file=sys.stderr)
            return 1
    print(f"image check passed: {image} ({builder})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
