"""The coffer's definition file and its shard encoding, without I/O: every TOML type kept, every kind of error one
line that names the file's line and never quotes a value."""

from __future__ import annotations

import datetime as dt
import math
import os
import re

import cbor2
import pytest

from quicnprotochat.common.bot_keys import bot_key_text
from quicnprotochat.common.coffer_shard import (
    LOCAL_DATETIME_TAG,
    CofferShardError,
    CofferValue,
    decode_shard,
    encode_shard,
)
from quicnprotochat.server.coffer_file import MAX_SHARD_BYTES, CofferFileError, parse_coffer_file

PLANTED = "planted-" + os.urandom(8).hex()
KEY_A = bot_key_text(os.urandom(32))
KEY_B = bot_key_text(os.urandom(32))

EVERY_TYPE = f'''# every type a coffer holds
[clients]
billing = "{KEY_A}"
"mail bot" = "{KEY_B}"

[billing]
token = "{PLANTED}"
multi = """
two lines"""
literal = 'C:\\path'
empty = ""
unicode = "sch\u00f6n \u2713"
count = 42
negative = -17
largest = 9_223_372_036_854_775_807
hex = 0xff
ratio = 0.25
exponent = -1.5e300
infinite = inf
not_a_number = nan
on = true
off = false
moment = 1979-05-27T07:32:00-08:00
utc = 1979-05-27T07:32:00.999999Z
local = 1979-05-27T07:32:00
day = 1979-05-27
alarm = 07:32:00.5
"dotted.name" = "quoted keys are names too"
'''

EXPECTED: dict[str, CofferValue] = {
    "token": PLANTED,
    "multi": "two lines",
    "literal": "C:\\path",
    "empty": "",
    "unicode": "sch\u00f6n \u2713",
    "count": 42,
    "negative": -17,
    "largest": 2**63 - 1,
    "hex": 255,
    "ratio": 0.25,
    "exponent": -1.5e300,
    "infinite": math.inf,
    "on": True,
    "off": False,
    "moment": dt.datetime(1979, 5, 27, 7, 32, tzinfo=dt.timezone(dt.timedelta(hours=-8))),
    "utc": dt.datetime(1979, 5, 27, 7, 32, 0, 999999, tzinfo=dt.UTC),
    "local": dt.datetime(1979, 5, 27, 7, 32),
    "day": dt.date(1979, 5, 27),
    "alarm": dt.time(7, 32, 0, 500000),
    "dotted.name": "quoted keys are names too",
}


def same_typed(actual: dict[str, CofferValue], expected: dict[str, CofferValue]) -> None:
    """Equal, with the same type for each value (True is not 1, a date is not a datetime) and the same offset."""
    actual = dict(actual)
    nan = actual.pop("not_a_number", None)
    assert isinstance(nan, float)
    assert math.isnan(nan)
    assert actual == expected
    for name, value in expected.items():
        assert type(actual[name]) is type(value), name
        if isinstance(value, dt.datetime):
            got = actual[name]
            assert isinstance(got, dt.datetime)
            assert got.utcoffset() == value.utcoffset(), name


def test_every_toml_type_is_parsed_with_its_type() -> None:
    definition = parse_coffer_file(EVERY_TYPE)
    billing, mail = definition.clients
    assert (billing.name, bot_key_text(billing.identity_key)) == ("billing", KEY_A)
    assert (mail.name, bot_key_text(mail.identity_key), dict(mail.secrets)) == ("mail bot", KEY_B, {})
    same_typed(dict(billing.secrets), EXPECTED)
    same_typed(decode_shard(billing.shard), EXPECTED)
    assert decode_shard(mail.shard) == {}


def test_the_shard_uses_standard_tags_where_there_are_some() -> None:
    tags: dict[str, int] = {}

    def record(tag: cbor2.CBORTag, _immutable: bool) -> object:
        return tag

    raw = cbor2.loads(parse_coffer_file(EVERY_TYPE).clients[0].shard, tag_hook=record)
    for name in ("local", "alarm"):
        tags[name] = raw[name].tag
    assert tags == {"local": LOCAL_DATETIME_TAG, "alarm": LOCAL_DATETIME_TAG + 1}
    plain = cbor2.loads(parse_coffer_file(EVERY_TYPE).clients[0].shard, tag_hook=lambda tag, _i: None)
    assert isinstance(plain["day"], dt.date)  # tag 1004 (RFC 8943), decoded by any cbor2
    assert isinstance(plain["moment"], dt.datetime)  # tag 0 (RFC 8949)


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (f'[clients]\nbot = "{KEY_A}"\n\n[stranger]\nsecret = "{PLANTED}"\n', 4, r"\[stranger\] is not a bot named"),
        ('[clients]\nbot = "not-a-key"\n', 2, "clients.bot is not a bot key"),
        (f'[clients]\nbot = "{KEY_A[:-1]}*"\n', 2, "only A-Z a-z 0-9"),
        ("[clients]\nbot = 42\n", 2, "must be the bot's public key as a string"),
        (f'[clients]\na = "{KEY_A}"\nb = "{KEY_A}"\n', 3, "same key as clients.a"),
        (f'[clients]\nbot = "{KEY_A}"\n[bot]\nok = 1\nlist = ["{PLANTED}"]\n', 5, "bot.list is an array"),
        (f'[clients]\nbot = "{KEY_A}"\n[bot]\nok = 1\n\n[bot.nested]\nx = "{PLANTED}"\n', 6, "bot.nested is a table"),
        (f'[clients]\nbot = "{KEY_A}"\n[bot]\ninline = {{ x = "{PLANTED}" }}\n', 4, "bot.inline is a table"),
        (f'[clients]\nbot = "{KEY_A}"\n[bot]\nx.y = "{PLANTED}"\n', 4, "bot.x is a table"),
        (f'[clients]\nbot = "{KEY_A}"\n[[bot]]\nx = "{PLANTED}"\n', 3, "'bot' is an array"),
        (f'stray = "{PLANTED}"\n[clients]\nbot = "{KEY_A}"\n', 1, "'stray' is outside any table"),
        (f'[bot]\nx = "{PLANTED}"\n', None, r"needs a \[clients\] table"),
        (f'[clients]\nbot = "{KEY_A}"\n[bot]\nx = "{PLANTED}\n', 4, "not valid TOML"),
        (f'[clients]\nbot = "{KEY_A}"\n[bot]\nx = "{PLANTED}\x01"\n', 4, "a character not allowed there"),
        (f'[clients]\nbot = "{KEY_A}"\n[bot]\nx = {PLANTED}\n', 4, "not valid TOML"),
        (f'[clients]\nbot = "{KEY_A}"\n[bot]\nx = "{PLANTED}"\nx = 2\n', 5, "not valid TOML"),
        (f'[clients]\nclients = "{KEY_A}"\n', 2, "cannot be named 'clients'"),
        (f'[clients]\nbot = "{KEY_A}"\n[bot]\nbig = "{"x" * MAX_SHARD_BYTES}"\n', 3, "a shard holds at most"),
    ],
)
def test_each_kind_of_error_names_its_line_and_no_value(text: str, line: int | None, reason: str) -> None:
    with pytest.raises(CofferFileError) as raised:
        parse_coffer_file(text)
    message = str(raised.value)
    assert raised.value.line == line, message
    assert "\n" not in message
    assert PLANTED not in message
    assert PLANTED[:8] not in message.replace("planted", "")
    assert re.search(reason, message), message
    if line is not None:
        assert message.startswith(f"line {line}: ")


def test_a_shard_is_decoded_only_if_it_is_one() -> None:
    assert decode_shard(encode_shard({"a": 1})) == {"a": 1}
    for bad in (
        b"\xff\x00",
        cbor2.dumps([1, 2]),
        cbor2.dumps({1: "x"}),
        cbor2.dumps({"a": [1]}),
        cbor2.dumps({"a": b"bytes"}),
        cbor2.dumps({"a": cbor2.CBORTag(99999, "x")}),
        cbor2.dumps({"a": cbor2.CBORTag(LOCAL_DATETIME_TAG, "1979-05-27T07:32:00+01:00")}),
    ):
        with pytest.raises(CofferShardError):
            decode_shard(bad)
