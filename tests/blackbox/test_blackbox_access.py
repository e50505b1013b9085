"""Access from outside: revocation ends a sync client's open watch; a login burst meets the lock."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from hitl.v1 import access_pb2, auth_pb2, auth_pb2_grpc, decision_pb2, decision_pb2_grpc

from tests.blackbox.harness import CALL_S, Served
from tests.harness import bearer

REAUTH_S = 1.0
# The documented bound is one re-check interval; the margin is for a loaded 2-core machine.
MARGIN_S = 5.0
BURST = 60
MAX_FAILURES = 5


@pytest.fixture
def strict(database_url: str, tmp_path: Path) -> Iterator[Served]:
    """A server re-checking open streams every REAUTH_S."""
    server = Served.start(
        database_url,
        tmp_path,
        HITL_STREAM_REAUTH_S=str(REAUTH_S),
        HITL_LOGIN_MAX_FAILURES=str(MAX_FAILURES),
    )
    try:
        yield server
    finally:
        server.stop()


def _watch_in_thread(served: Served, token: str) -> queue.Queue[object]:
    """Reads WatchPending on a sync channel of its own thread; puts messages, then the error."""
    out: queue.Queue[object] = queue.Queue()

    def run() -> None:
        with served.channel() as channel:
            stream = decision_pb2_grpc.DecisionServiceStub(channel).WatchPending(
                decision_pb2.WatchPendingRequest(), metadata=bearer(token), timeout=120
            )
            try:
                for message in stream:
                    out.put(message)
            except grpc.RpcError as error:
                out.put(error)

    threading.Thread(target=run, daemon=True).start()
    return out


def _until_error(out: queue.Queue[object], within_s: float) -> grpc.RpcError:
    deadline = time.monotonic() + within_s
    while True:
        item = out.get(timeout=max(deadline - time.monotonic(), 0.01))
        if isinstance(item, grpc.RpcError):
            return item


def _deactivate(served: Served, user_id: str, token: str) -> None:
    with served.channel() as channel:
        auth_pb2_grpc.AuthServiceStub(channel).UpdateUser(
            auth_pb2.UpdateUserRequest(
                user_id=user_id,
                active=False,
                update_mask=field_mask_pb2.FieldMask(paths=["active"]),
            ),
            metadata=served.admin(),
            timeout=CALL_S,
        )


def _demote(served: Served, user_id: str, token: str) -> None:
    with served.channel() as channel:
        auth_pb2_grpc.AuthServiceStub(channel).UpdateUser(
            auth_pb2.UpdateUserRequest(
                user_id=user_id,
                role=access_pb2.ROLE_VIEWER,
                update_mask=field_mask_pb2.FieldMask(paths=["role"]),
            ),
            metadata=served.admin(),
            timeout=CALL_S,
        )


def _logout(served: Served, user_id: str, token: str) -> None:
    with served.channel() as channel:
        auth_pb2_grpc.AuthServiceStub(channel).Logout(
            auth_pb2.LogoutRequest(), metadata=bearer(token), timeout=CALL_S
        )


@pytest.mark.parametrize(
    ("revoke", "code"),
    [
        (_deactivate, grpc.StatusCode.PERMISSION_DENIED),
        (_logout, grpc.StatusCode.UNAUTHENTICATED),
        (_demote, grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_revocation_ends_an_open_watch_within_the_bound(
    strict: Served, revoke: Callable[[Served, str, str], None], code: grpc.StatusCode
) -> None:
    username, password = strict.create_user(access_pb2.ROLE_ANALYST)
    token = strict.login(username, password)
    with strict.channel() as channel:
        me = auth_pb2_grpc.AuthServiceStub(channel).GetCurrentUser(
            auth_pb2.GetCurrentUserRequest(), metadata=bearer(token), timeout=CALL_S
        )
    out = _watch_in_thread(strict, token)
    first = out.get(timeout=CALL_S)
    assert isinstance(first, decision_pb2.WatchPendingResponse)
    assert first.WhichOneof("event") == "snapshot_complete"
    revoke(strict, me.user.id, token)
    revoked_at = time.monotonic()
    error = _until_error(out, REAUTH_S + MARGIN_S)
    took_s = time.monotonic() - revoked_at
    assert error.code() is code
    assert took_s < REAUTH_S + MARGIN_S
    print(f"{revoke.__name__}: stream ended {took_s:.2f} s after revocation")
    strict.assert_alive()


def test_deactivation_ends_every_watch_of_one_token_from_threads(strict: Served) -> None:
    # Streams of one token share their re-checks: each still ends within the bound.
    username, password = strict.create_user(access_pb2.ROLE_ANALYST)
    token = strict.login(username, password)
    with strict.channel() as channel:
        me = auth_pb2_grpc.AuthServiceStub(channel).GetCurrentUser(
            auth_pb2.GetCurrentUserRequest(), metadata=bearer(token), timeout=CALL_S
        )
    outs = [_watch_in_thread(strict, token) for _ in range(8)]
    for out in outs:
        first = out.get(timeout=CALL_S)
        assert isinstance(first, decision_pb2.WatchPendingResponse)
        assert first.WhichOneof("event") == "snapshot_complete"
    _deactivate(strict, me.user.id, token)
    deactivated_at = time.monotonic()
    codes = {_until_error(out, REAUTH_S + MARGIN_S).code() for out in outs}
    assert codes == {grpc.StatusCode.PERMISSION_DENIED}
    assert time.monotonic() - deactivated_at < REAUTH_S + MARGIN_S
    strict.assert_alive()


def test_a_burst_of_wrong_logins_from_threads_judges_at_most_the_limit(strict: Served) -> None:
    username, password = strict.create_user(access_pb2.ROLE_ADMIN)
    start = threading.Barrier(BURST)
    codes: Counter[grpc.StatusCode] = Counter()
    lock = threading.Lock()

    def guess(n: int) -> None:
        with strict.channel() as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            grpc.channel_ready_future(channel).result(timeout=CALL_S)
            start.wait(timeout=CALL_S)
            try:
                stub.Login(
                    auth_pb2.LoginRequest(username=username, password=f"guess-{n:03d}-wrong"),
                    timeout=CALL_S * 3,
                )
                got = grpc.StatusCode.OK
            except grpc.RpcError as error:
                got = error.code()
        with lock:
            codes[got] += 1

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(BURST)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=CALL_S * 4)
    assert sum(codes.values()) == BURST
    print(f"judged {codes[grpc.StatusCode.UNAUTHENTICATED]} of {BURST}: {dict(codes)}")
    assert codes[grpc.StatusCode.UNAUTHENTICATED] <= MAX_FAILURES
    assert codes[grpc.StatusCode.RESOURCE_EXHAUSTED] >= BURST - MAX_FAILURES
    # The right password is refused while locked, until an admin lifts the lock (grpcurl).
    with pytest.raises(grpc.RpcError) as locked:
        strict.login(username, password)
    assert locked.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    done = strict.grpcurl(
        "hitl.v1.AuthService/UnlockUser",
        token=strict.admin_token(),
        data=json.dumps({"username": username}),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["user"]["username"] == username
    assert strict.login(username, password)
    strict.assert_alive()


def test_fifty_threads_signing_in_to_one_account_all_get_in(strict: Served) -> None:
    # Right passwords racing for one account queue for its attempt slots; none is locked out.
    username, password = strict.create_user(access_pb2.ROLE_SERVICE)
    start = threading.Barrier(50)

    def sign_in(_: int) -> str:
        with strict.channel() as channel:
            grpc.channel_ready_future(channel).result(timeout=CALL_S)
            start.wait(timeout=CALL_S)
            reply = auth_pb2_grpc.AuthServiceStub(channel).Login(
                auth_pb2.LoginRequest(username=username, password=password), timeout=CALL_S * 3
            )
        return str(reply.tokens.access_token)

    with ThreadPoolExecutor(50) as pool:
        tokens = list(pool.map(sign_in, range(50)))
    assert all(tokens)
    strict.assert_alive()
