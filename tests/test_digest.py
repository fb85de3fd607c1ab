"""storage/digest.py: the only way a digest becomes a path, and the only way back."""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.digest import (
    EMPTY_SHA256,
    blob_relpath,
    digest_of_relpath,
    is_sha256_hex,
)

HEX = "0123456789abcdef"
GOOD = hashlib.sha256(b"workflow-artifacts").hexdigest()

# Every one of these must be refused: none of them may ever become part of a path.
BAD_DIGESTS = [
    pytest.param("", id="empty"),
    pytest.param(GOOD.upper(), id="uppercase"),
    pytest.param(GOOD[:-1] + "A", id="one-uppercase-char"),
    pytest.param(GOOD[:63], id="63-chars"),
    pytest.param(GOOD + "0", id="65-chars"),
    pytest.param("g" * 64, id="non-hex-letter"),
    pytest.param("../" + GOOD[3:], id="dotdot-slash"),
    pytest.param("../../../../etc/passwd".ljust(64, "a"), id="traversal"),
    pytest.param(GOOD[:32] + "/" + GOOD[33:], id="slash-inside"),
    pytest.param("/" + GOOD[1:], id="absolute"),
    pytest.param(GOOD[:63] + "\x00", id="nul-last"),
    pytest.param("\x00" + GOOD[1:], id="nul-first"),
    pytest.param(GOOD + "\x00", id="nul-appended"),
    pytest.param(GOOD + "\n", id="trailing-newline"),
    pytest.param(GOOD[:63] + "\n", id="newline-in-64"),
    pytest.param(" " + GOOD[1:], id="leading-space"),
    pytest.param(GOOD[:63] + " ", id="trailing-space"),
    pytest.param("\u0660" * 64, id="arabic-indic-digits"),
    pytest.param("\uff10" * 64, id="fullwidth-digits"),
    pytest.param("." * 64, id="dots"),
    pytest.param("sha256:" + GOOD[7:], id="algorithm-prefix"),
    pytest.param(GOOD[:62] + "\\x", id="backslash"),
]


def test_empty_digest_constant_is_sha256_of_nothing() -> None:
    assert hashlib.sha256(b"").hexdigest() == EMPTY_SHA256


def test_blob_relpath_layout() -> None:
    assert blob_relpath(EMPTY_SHA256) == PurePosixPath(
        "sha256", "e3", "b0", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert str(blob_relpath(GOOD)) == f"sha256/{GOOD[:2]}/{GOOD[2:4]}/{GOOD}"
    assert blob_relpath(GOOD).parts == ("sha256", GOOD[:2], GOOD[2:4], GOOD)
    assert not blob_relpath(GOOD).is_absolute()


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_relpath_and_digest_are_inverse(raw: bytes) -> None:
    digest = raw.hex()
    assert is_sha256_hex(digest)
    rel = blob_relpath(digest)
    assert rel.parts == ("sha256", digest[:2], digest[2:4], digest)
    assert digest_of_relpath(rel) == digest
    assert blob_relpath(digest_of_relpath(rel)) == rel
    # A string form of the path round-trips too (how a directory walk would see it).
    assert digest_of_relpath(PurePosixPath(str(rel))) == digest


@pytest.mark.parametrize("bad", BAD_DIGESTS)
def test_bad_digest_never_forms_a_path(bad: str) -> None:
    assert is_sha256_hex(bad) is False
    with pytest.raises(ValueError, match="not a sha256 hex digest"):
        blob_relpath(bad)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_that_is_not_lowercase_hex_is_refused(text: str) -> None:
    valid = len(text) == 64 and all(c in HEX for c in text)
    assert is_sha256_hex(text) is valid
    if valid:
        assert digest_of_relpath(blob_relpath(text)) == text
    else:
        with pytest.raises(ValueError):
            blob_relpath(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=HEX + "ABCDEF/.\x00 \n", min_size=60, max_size=68))
def test_near_miss_digests_are_refused(text: str) -> None:
    valid = len(text) == 64 and all(c in HEX for c in text)
    assert is_sha256_hex(text) is valid
    if not valid:
        with pytest.raises(ValueError):
            blob_relpath(text)


@pytest.mark.parametrize(
    "rel",
    [
        pytest.param(PurePosixPath(GOOD), id="bare-digest"),
        pytest.param(PurePosixPath("sha256", GOOD), id="too-few-parts"),
        pytest.param(PurePosixPath("sha256", GOOD[:2], GOOD), id="three-parts"),
        pytest.param(PurePosixPath("sha256", GOOD[:2], GOOD[2:4], GOOD, "x"), id="too-many"),
        pytest.param(PurePosixPath("/sha256", GOOD[:2], GOOD[2:4], GOOD), id="absolute"),
        pytest.param(PurePosixPath("sha512", GOOD[:2], GOOD[2:4], GOOD), id="other-algorithm"),
        pytest.param(PurePosixPath("tmp", GOOD[:2], GOOD[2:4], GOOD), id="tmp-dir"),
        pytest.param(PurePosixPath("sha256", GOOD[2:4], GOOD[:2], GOOD), id="swapped-fanout"),
        pytest.param(PurePosixPath("sha256", "00", GOOD[2:4], GOOD), id="wrong-first-fanout"),
        pytest.param(PurePosixPath("sha256", GOOD[:2], "00", GOOD), id="wrong-second-fanout"),
        pytest.param(
            PurePosixPath("sha256", GOOD[:2].upper(), GOOD[2:4].upper(), GOOD.upper()),
            id="uppercase",
        ),
        pytest.param(PurePosixPath("sha256", GOOD[:2], GOOD[2:4], GOOD + ".tmp"), id="suffix"),
        pytest.param(PurePosixPath("sha256", GOOD[:2], GOOD[2:4], GOOD[:63]), id="63-chars"),
        pytest.param(PurePosixPath("sha256", "..", "..", ".." + GOOD[2:]), id="dotdot"),
        pytest.param(PurePosixPath("sha256", "ab", "cd", "put-" + "0" * 32), id="staging-name"),
    ],
)
def test_digest_of_relpath_refuses_non_blob_paths(rel: PurePosixPath) -> None:
    with pytest.raises(ValueError):
        digest_of_relpath(rel)
