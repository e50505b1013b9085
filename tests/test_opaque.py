"""One codec for every opaque token: page tokens and watch cursors keep their wire form."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hitl_grpc.api.convert import from_page_token, page_token
from hitl_grpc.domain import opaque
from hitl_grpc.domain.errors import InvalidField
from hitl_grpc.events import cursor


@settings(database=None)
@given(st.binary(max_size=256))
def test_every_byte_string_round_trips_without_padding(raw: bytes) -> None:
    token = opaque.encode(raw)
    assert "=" not in token
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert opaque.decode(token) == raw


def test_issued_tokens_keep_their_wire_form() -> None:
    # Clients hold tokens across upgrades: these strings must keep meaning the same.
    assert page_token("a", "42") == "YTo0Mg"
    assert from_page_token("YTo0Mg", "a") == "42"
    assert cursor.encode(1234) == "v2:MTIzNA"
    assert cursor.decode("v2:MTIzNA") == 1234


@pytest.mark.parametrize("token", ["YTo0Mg$", "YT o0Mg", "YTo0Mg==x", "=YTo0Mg", "ä", "A"])
def test_anything_but_unpadded_base64url_is_refused(token: str) -> None:
    assert opaque.decode(token) is None
    with pytest.raises(InvalidField, match="page_token: is not a token this method returned"):
        from_page_token(token, "a")


def test_text_tokens_must_be_text_in_their_encoding() -> None:
    assert opaque.decode_text(opaque.encode("ü".encode())) == "ü"
    assert opaque.decode_text(opaque.encode("ü".encode()), "ascii") is None
    assert opaque.decode_text(opaque.encode(b"\xff\xfe")) is None
    with pytest.raises(InvalidField, match="resume_cursor: not a cursor issued by this service"):
        cursor.decode("v2:" + opaque.encode("\u0661".encode()))
