"""HITL_WORKERS=2: one `hitl-grpc serve` supervising two serving processes on one port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

import grpc
import pytest
from hitl.v1 import auth_pb2, auth_pb2_grpc, decision_pb2, decision_pb2_grpc

from tests.blackbox.conftest import ServedFactory
from tests.blackbox.harness import CALL_S, STOP_S, Served, _env
from tests.children import SERVE
from tests.harness import bearer
from tests.samples import sample_request

POSTGRES_ONLY = pytest.mark.parametrize("backend", ["postgres"])
WORKERS_LINE: Final = "hitl-grpc workers: "
CHANNELS: Final = 40
GET_CURRENT_USER: Final = "/hitl.v1.AuthService/GetCurrentUser"


def _workers(served: Served) -> list[int]:
    """The worker pids the supervisor announced."""
    line = served.wait_for_line(WORKERS_LINE)  # "2 (pids 123 456)"
    return [int(pid) for pid in line.split("pids", 1)[1].strip(" )").split()]


def _channel(served: Served) -> grpc.Channel:
    # A connection of its own: channels of one process otherwise share one per target.
    return grpc.insecure_channel(served.address, options=[("grpc.use_local_subchannel_pool", 1)])


def _whoami(channel: grpc.Channel, token: str, request_id: str) -> None:
    auth_pb2_grpc.AuthServiceStub(channel).GetCurrentUser(
        auth_pb2.GetCurrentUserRequest(),
        metadata=(*bearer(token), ("x-request-id", request_id)),
        timeout=CALL_S,
    )


def _pids_of(served: Served, request_ids: list[str]) -> dict[str, int]:
    """Which worker pid served each request, from its access-log line."""
    wanted = set(request_ids)
    deadline = time.monotonic() + CALL_S
    while True:
        entries = served.log_entries(lambda e: e.get("request_id") in wanted and "pid" in e)
        found = {e["request_id"]: e["pid"] for e in entries}
        if len(found) == len(wanted) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.fixture
def workers(make_served: ServedFactory) -> Served:
    """`hitl-grpc serve` with two workers on the test's PostgreSQL database."""
    return make_served(HITL_WORKERS="2")


@POSTGRES_ONLY
def test_calls_over_many_connections_reach_both_workers_and_metrics_count_them_all(
    workers: Served,
) -> None:
    pids = _workers(workers)
    token = workers.admin_token()
    ids = [f"spread-{n}-{uuid.uuid4().hex[:8]}" for n in range(CHANNELS)]

    def call(request_id: str) -> None:
        with _channel(workers) as channel:
            _whoami(channel, token, request_id)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(call, ids))
    served_by = _pids_of(workers, ids)
    assert sorted(served_by) == sorted(ids)
    # Each connection went to one worker, and both took some (the kernel hashes them).
    assert set(served_by.values()) == set(pids)
    # One endpoint, every worker's calls: the login and the 40 calls, whoever served them.
    sample = f'hitl_rpc_total{{code="OK",method="{GET_CURRENT_USER}"}} {float(CHANNELS)}'
    body = workers.wait_for_metrics(sample, "hitl_workers_serving 2.0")
    assert sample in body
    assert "hitl_workers_serving 2.0" in body
    assert 'hitl_build_info{grpcio="' in body
    workers.assert_alive()


@POSTGRES_ONLY
def test_a_submit_through_one_worker_reaches_a_watcher_served_by_the_other(
    workers: Served,
) -> None:
    pids = _workers(workers)
    token = workers.admin_token()
    channels = [_channel(workers) for _ in range(CHANNELS)]
    try:
        ids = [f"probe-{n}-{uuid.uuid4().hex[:8]}" for n in range(len(channels))]
        for channel, request_id in zip(channels, ids, strict=True):
            _whoami(channel, token, request_id)
        served_by = _pids_of(workers, ids)
        by_pid = {served_by[i]: channel for channel, i in zip(channels, ids, strict=True)}
        assert set(by_pid) == set(pids)
        watching, submitting = by_pid[pids[0]], by_pid[pids[1]]

        stream = decision_pb2_grpc.DecisionServiceStub(watching).WatchPending(
            decision_pb2.WatchPendingRequest(), metadata=bearer(token), timeout=CALL_S * 2
        )
        for reply in stream:
            if reply.WhichOneof("event") == "snapshot_complete":
                break
        request = sample_request(f"across-{uuid.uuid4().hex[:8]}")
        decision_pb2_grpc.DecisionServiceStub(submitting).SubmitDecision(
            request, metadata=bearer(token), timeout=CALL_S
        )
        for reply in stream:
            if reply.WhichOneof("event") == "added":
                assert reply.added.analysis_id == request.analysis_id
                break
        stream.cancel()
    finally:
        for channel in channels:
            channel.close()
    workers.assert_alive()


@POSTGRES_ONLY
def test_a_killed_worker_is_replaced_and_the_port_keeps_serving(workers: Served) -> None:
    pids = _workers(workers)
    token = workers.admin_token()
    os.kill(pids[0], signal.SIGKILL)
    # Connections the kernel queued for the killed worker are reset (a client retries
    # them); once it is gone, the other takes every new connection.
    restarted = workers.log_entries(
        lambda e: str(e.get("msg", "")).startswith(f"worker 0 (pid {pids[0]}) exited with -9")
    )
    assert restarted, workers.stderr_tail()
    for n in range(10):
        with _channel(workers) as channel:
            _whoami(channel, token, f"meanwhile-{n}-{uuid.uuid4().hex[:8]}")
    replaced = workers.log_entries(
        lambda e: (
            str(e.get("msg", "")).startswith("worker 0 serving") and e.get("worker_pid") not in pids
        )
    )
    assert replaced, workers.stderr_tail()
    body = workers.wait_for_metrics("hitl_workers_serving 2.0", "hitl_worker_restarts_total 1.0")
    assert "hitl_workers_serving 2.0" in body
    assert "hitl_worker_restarts_total 1.0" in body
    new_pid = replaced[0]["worker_pid"]
    # The new worker serves too: some fresh connection lands on it.
    ids = [f"after-{n}-{uuid.uuid4().hex[:8]}" for n in range(CHANNELS)]
    for request_id in ids:
        with _channel(workers) as channel:
            _whoami(channel, token, request_id)
    assert new_pid in set(_pids_of(workers, ids).values())
    workers.assert_alive()


@POSTGRES_ONLY
def test_sigterm_drains_every_worker_and_the_supervisor_exits_zero(workers: Served) -> None:
    pids = _workers(workers)
    token = workers.admin_token()
    channels = [_channel(workers) for _ in range(8)]
    streams = [
        decision_pb2_grpc.DecisionServiceStub(channel).WatchPending(
            decision_pb2.WatchPendingRequest(), metadata=bearer(token), timeout=CALL_S * 3
        )
        for channel in channels
    ]
    for stream in streams:
        for reply in stream:
            if reply.WhichOneof("event") == "snapshot_complete":
                break
    # Gauges of open streams are summed over the live workers, whichever holds each.
    active = 'hitl_rpc_active{method="/hitl.v1.DecisionService/WatchPending"} 8.0'
    body = workers.wait_for_metrics(active, "hitl_watchers 8.0")
    assert active in body
    assert "hitl_watchers 8.0" in body
    workers.stop()  # SIGTERM; asserts exit 0 within the harness's bound
    for stream in streams:
        with pytest.raises(grpc.RpcError) as ended:
            for _ in stream:
                pass
        assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
    for channel in channels:
        channel.close()
    # No worker outlives its supervisor.
    assert not any(_worker_alive(pid) for pid in pids)


def _worker_alive(pid: int) -> bool:
    """Whether `pid` is still a running worker (not gone, not a zombie, not reused)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        command = Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return False
    return state != "Z" and "--worker-index" in command


@POSTGRES_ONLY
def test_workers_drain_and_exit_when_their_supervisor_is_killed(
    database_url: str, tmp_path: Path
) -> None:
    served = Served.start(database_url, tmp_path, HITL_WORKERS="2")
    pids = _workers(served)
    try:
        assert all(_worker_alive(pid) for pid in pids)
        served.proc.kill()
        served.proc.wait()
        deadline = time.monotonic() + STOP_S
        while any(_worker_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_worker_alive(pid) for pid in pids), served.stderr_tail()
    finally:
        for pid in pids:
            if _worker_alive(pid):
                os.kill(pid, signal.SIGKILL)


def _serve(database_url: str, workdir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        SERVE,
        cwd=workdir,
        env=_env(database_url, env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CALL_S * 3,
        check=False,
    )


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_with_several_workers_is_refused_with_one_line(
    database_url: str, tmp_path: Path
) -> None:
    done = _serve(database_url, tmp_path, HITL_WORKERS="2")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "hitl-grpc: configuration error: HITL_WORKERS: several workers need PostgreSQL: "
        "SQLite has one writer and no NOTIFY to wake the other workers' readers"
    ]
    assert done.stdout == ""


@POSTGRES_ONLY
def test_a_taken_port_stops_the_supervisor_before_any_worker(
    database_url: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve(database_url, tmp_path, HITL_WORKERS="2", HITL_LISTEN=f"127.0.0.1:{port}")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"hitl-grpc: cannot listen on 127.0.0.1:{port}: ")
    assert "worker" not in done.stderr
    assert "serving on" not in done.stdout


@POSTGRES_ONLY
def test_what_stops_every_worker_is_said_once_and_the_supervisor_exits_with_it(
    database_url: str, tmp_path: Path
) -> None:
    # The supervisor checks the files exist; only a worker, binding, finds them unusable.
    bad = tmp_path / "not-a-certificate.pem"
    bad.write_text("not a certificate\n")
    done = _serve(
        database_url,
        tmp_path,
        HITL_WORKERS="2",
        HITL_TLS_CERT_FILE=str(bad),
        HITL_TLS_KEY_FILE=str(bad),
    )
    assert done.returncode == 1
    said = [line for line in done.stderr.splitlines() if line.startswith("hitl-grpc")]
    assert len(said) == 1, done.stderr
    assert said[0].startswith("hitl-grpc: cannot listen on 127.0.0.1:")
    assert "serving on" not in done.stdout
