"""`hitl-grpc health` as a probe runs it: liveness apart from readiness, plaintext and TLS."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.blackbox.conftest import ServedFactory
from tests.blackbox.harness import CALL_S, Served
from tests.faultproxy import Fault, proxied

SERVING: Final = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: Final = health_pb2.HealthCheckResponse.NOT_SERVING


def _probe(served: Served, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HITL_")}
    return subprocess.run(
        [sys.executable, "-m", "hitl_grpc.cli", "health", "--address", served.address, *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=CALL_S * 2,
        check=False,
    )


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=hitl.test",
         "-addext", "subjectAltName=DNS:hitl.test"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("service", ["", "liveness", "readiness", "hitl.v1.DecisionService"])
def test_each_health_name_is_serving_on_a_healthy_server(served: Served, service: str) -> None:
    done = _probe(served, "--service", service)
    assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr
    served.assert_alive()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_unknown_health_name_is_unhealthy_with_a_clear_line(served: Served) -> None:
    done = _probe(served, "--service", "no.such.Service")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "unhealthy: NOT_FOUND: the server has no health service named 'no.such.Service'"
    )


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_tls_server_is_probed_over_tls_with_its_own_certificate(
    make_served: ServedFactory, tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path)
    served = make_served(HITL_TLS_CERT_FILE=str(cert), HITL_TLS_KEY_FILE=str(key))
    # What a container's HEALTHCHECK does: the server's settings alone pick TLS.
    done = _probe(served, "--server-name", "hitl.test", HITL_TLS_CERT_FILE=str(cert))
    assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr
    explicit = _probe(served, "--tls", "--ca-file", str(cert), "--server-name", "hitl.test")
    assert explicit.returncode == 0, explicit.stderr
    plaintext = _probe(served, "--timeout", "2")
    assert plaintext.returncode == 1
    assert plaintext.stderr.startswith("unhealthy: UNAVAILABLE"), plaintext.stderr


async def _next_status(watch: grpc.aio.UnaryStreamCall[Any, Any], want: int) -> None:
    async with asyncio.timeout(CALL_S):
        async for reply in watch:
            if reply.status == want:
                return


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_silent_database_ends_readiness_but_never_liveness(
    database_url: str, tmp_path: Path
) -> None:
    async with proxied(database_url) as (proxy, proxied_url):
        # The proxy runs on this loop: the blocking start goes to a thread.
        served = await asyncio.to_thread(
            Served.start,
            proxied_url,
            tmp_path,
            HITL_DB_TIMEOUT_S="1",
            HITL_DB_CHECK_INTERVAL_S="0.2",
        )
        try:
            async with grpc.aio.insecure_channel(served.address) as channel:
                request = health_pb2.HealthCheckRequest(service="readiness")
                watch = health_pb2_grpc.HealthStub(channel).Watch(request, timeout=CALL_S * 4)
                await _next_status(watch, SERVING)
                await proxy.set_fault(Fault.BLACKHOLE)
                await _next_status(watch, NOT_SERVING)
                live = await asyncio.to_thread(_probe, served, "--service", "liveness")
                overall = await asyncio.to_thread(_probe, served, "--service", "")
                await proxy.set_fault(Fault.NONE)
                await _next_status(watch, SERVING)
                watch.cancel()
            served.assert_alive()
        finally:
            await asyncio.to_thread(served.stop)
    assert (live.returncode, live.stdout.strip()) == (0, "SERVING"), live.stderr
    assert (overall.returncode, overall.stdout.strip()) == (1, "NOT_SERVING"), overall.stderr
