"""A served process with client certificates: grpcurl and sync clients from outside."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from hitl.v1 import access_pb2, auth_pb2, auth_pb2_grpc

from tests.blackbox.conftest import ServedFactory
from tests.blackbox.harness import ADMIN_PASSWORD, CALL_S, GRPCURL, PROTOS, Served
from tests.certificates import Authority, Issued
from tests.harness import bearer
from tests.samples import sample_request

SUBJECT = "CN=candi,O=SOC"


def _channel(authority: Authority, address: str, client: Issued | None = None) -> grpc.Channel:
    key, chain = client.pair() if client else (None, None)
    return grpc.secure_channel(
        address, grpc.ssl_channel_credentials(authority.ca.read_bytes(), key, chain)
    )


def _grpcurl(
    authority: Authority, address: str, client: Issued, method: str, data: str = "{}"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(GRPCURL), "-max-time", str(CALL_S), "-import-path", str(PROTOS),
            "-proto", "hitl/v1/decision.proto", "-proto", "hitl/v1/auth.proto",
            "-cacert", str(authority.ca), "-cert", str(client.cert), "-key", str(client.key),
            "-d", data, address, method,
        ],
        capture_output=True, text=True, timeout=CALL_S * 2, check=False,
    )  # fmt: skip


def _served(make_served: ServedFactory, authority: Authority) -> tuple[Served, str]:
    server = authority.server()
    served = make_served(
        HITL_TLS_CERT_FILE=str(server.cert),
        HITL_TLS_KEY_FILE=str(server.key),
        HITL_TLS_CLIENT_CA_FILE=str(authority.ca),
        HITL_MTLS_LISTEN="127.0.0.1:0",
    )
    return served, served.wait_for_line("hitl-grpc client certificates on ")


def test_grpcurl_with_a_bound_certificate_submits_as_the_service_account(
    make_served: ServedFactory, tmp_path: Path
) -> None:
    authority = Authority(tmp_path)
    served, mtls = _served(make_served, authority)
    with _channel(authority, served.address) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        admin = stub.Login(
            auth_pb2.LoginRequest(username="admin", password=ADMIN_PASSWORD), timeout=CALL_S
        ).tokens.access_token
        stub.CreateUser(
            auth_pb2.CreateUserRequest(
                username="candi", role=access_pb2.ROLE_SERVICE, certificate_subject=SUBJECT
            ),
            metadata=bearer(admin),
            timeout=CALL_S,
        )
    candi = authority.client("candi")
    me = _grpcurl(authority, mtls, candi, "hitl.v1.AuthService/GetCurrentUser")
    assert me.returncode == 0, me.stderr
    assert json.loads(me.stdout)["user"]["username"] == "candi"
    submitted = _grpcurl(
        authority,
        mtls,
        candi,
        "hitl.v1.DecisionService/SubmitDecision",
        json_format.MessageToJson(sample_request("mtls-1")),
    )
    assert submitted.returncode == 0, submitted.stderr
    assert json.loads(submitted.stdout)["decision"]["submittedBy"] == "candi"
    stranger = _grpcurl(
        authority, mtls, authority.client("stranger"), "hitl.v1.AuthService/GetCurrentUser"
    )
    assert stranger.returncode != 0
    assert "Unauthenticated" in stranger.stderr
    assert "CN=stranger,O=SOC" in stranger.stderr
    served.assert_alive()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_health_probe_presents_a_certificate_where_one_is_required(
    make_served: ServedFactory, tmp_path: Path
) -> None:
    authority = Authority(tmp_path)
    served, mtls = _served(make_served, authority)
    probe = authority.client("probe")
    command = [sys.executable, "-m", "hitl_grpc.cli", "health", "--address", mtls]
    tls = ["--ca-file", str(authority.ca)]
    ok = subprocess.run(
        [*command, *tls, "--cert-file", str(probe.cert), "--key-file", str(probe.key)],
        capture_output=True, text=True, timeout=CALL_S * 2, check=False,
    )  # fmt: skip
    assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING"), ok.stderr
    refused = subprocess.run(
        [*command, *tls, "--timeout", "2"],
        capture_output=True, text=True, timeout=CALL_S * 2, check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.startswith("unhealthy: UNAVAILABLE"), refused.stderr
    half = subprocess.run(
        [*command, *tls, "--cert-file", str(probe.cert)],
        capture_output=True, text=True, timeout=CALL_S * 2, check=False,
    )  # fmt: skip
    assert half.returncode == 2
    assert half.stderr.strip() == "hitl-grpc health: give --cert-file and --key-file together"
    served.assert_alive()
