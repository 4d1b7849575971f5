"""Object keys: traversal, control characters and odd names are neutralised; lengths are bounded."""

from __future__ import annotations

import re

import grpc
import pytest

from server.errors import InvalidArgument
from server.storage.keys import MAX_NAME_BYTES, check_key, new_key, safe_name, safe_prefix


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system.ini", "system.ini"),
        ("/abs/path/x.png", "x.png"),
        ("..", "file"),
        ("../", "file"),
        ("", "file"),
        (".bashrc", "bashrc"),
        ("a b\tc\nd.txt", "a_bcd.txt"),
        ("evil\x00name\x1b[31m.png", "evilname_31m.png"),
        ("what?*<>|:.jpg", "what.jpg"),
        ("foto über café.png", "foto_über_café.png"),
        ("a....b", "a.b"),
        ("-rf", "rf"),
    ],
)
def test_safe_name(given: str, expected: str) -> None:
    assert safe_name(given) == expected


def test_long_names_are_cut_on_characters_keeping_the_extension() -> None:
    name = safe_name("é" * 300 + ".png")
    assert len(name.encode()) <= MAX_NAME_BYTES and name.endswith(".png")
    assert name.removesuffix(".png") == "é" * len(name.removesuffix(".png"))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("reports/2024", "reports/2024"),
        ("../../etc", "etc"),
        ("a/../../b", "a/b"),
        ("/x//y/./z/", "x/y/z"),
        ("..", ""),
        ("c:\\temp\\..\\x", "c/temp/x"),
    ],
)
def test_safe_prefix(given: str, expected: str) -> None:
    assert safe_prefix(given) == expected


def test_new_key_is_prefix_id_and_name() -> None:
    first = new_key("../../x.png", "server", "../user/../in")
    second = new_key("../../x.png", "server", "../user/../in")
    assert re.fullmatch(r"server/user/in/[0-9a-f]{32}-x\.png", first)
    assert first != second


@pytest.mark.parametrize(
    "key", ["", "/abs", "a/../b", "..", "a//b", "a/./b", "a\\b", "x\x00", ".incoming/x", "a/" * 600]
)
def test_check_key_rejects_escaping_keys(key: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_key(key)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "object key" in caught.value.message


def test_check_key_accepts_generated_keys() -> None:
    key = new_key("a.png", "p/q")
    assert check_key(key) == key
