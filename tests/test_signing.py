"""Signed download links (app/signing.py), as pure unit tests: no server, no database."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar.datastructures import MultiDict

from app import signing
from app.settings import Settings
from app.signing import (
    EXPIRES,
    SIG,
    LinkRefused,
    LinkSigner,
    SigningKeyError,
    decode_signing_key,
    lifetime,
    load_signing_secret,
)

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
NOW = 1_700_000_000
MAX = 7 * 86400
HASH = hashlib.sha256(b"the bytes").hexdigest()
LINK = {"artifact_id": "3f2a9c1e-0000-4000-8000-000000000001", "tenant": "acme"}


@pytest.fixture
def signer() -> LinkSigner:
    return LinkSigner(SECRET, MAX)


def query_params(text: str) -> MultiDict[str]:
    """The query as Litestar's `request.query_params` holds it: a multi-dict, duplicates kept."""
    return MultiDict(parse_qsl(text))


def make(signer: LinkSigner, expires_at: int = NOW + 3600, **fields: str) -> dict[str, str]:
    args = {**LINK, "content_hash": HASH, **fields}
    return signer.sign(expires_at=expires_at, **args)


def check(signer: LinkSigner, query: object, now: float = NOW, **fields: str) -> None:
    args = {**LINK, "content_hash": HASH, **fields}
    signer.verify(query=query, now=now, **args)  # type: ignore[arg-type]


def refused(signer: LinkSigner, query: object, now: float = NOW, **fields: str) -> str:
    with pytest.raises(LinkRefused) as info:
        check(signer, query, now, **fields)
    return info.value.reason


# -- a good link -------------------------------------------------------------------------------


def test_a_link_verifies_and_has_the_documented_shape(signer: LinkSigner) -> None:
    query = make(signer)
    assert set(query) == {"expires", "sig"} == {EXPIRES, SIG}
    assert query["expires"] == str(NOW + 3600)
    assert len(query["sig"]) == 43
    assert set(query["sig"]) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )
    check(signer, query)
    assert make(signer) == query  # deterministic


def test_a_link_has_one_spelling_reordered_parameters_are_refused(signer: LinkSigner) -> None:
    query = make(signer)
    check(signer, [("expires", query["expires"]), ("sig", query["sig"])])
    check(signer, query_params(f"expires={query['expires']}&sig={query['sig']}"))
    assert refused(signer, {"sig": query["sig"], "expires": query["expires"]}) == (
        "malformed_parameter"
    )
    assert refused(signer, [("sig", query["sig"]), ("expires", query["expires"])]) == (
        "malformed_parameter"
    )
    swapped = query_params(f"sig={query['sig']}&expires={query['expires']}")
    assert refused(signer, swapped) == "malformed_parameter"


def test_as_litestar_parses_it_from_a_url(signer: LinkSigner) -> None:
    from urllib.parse import urlencode

    query = make(signer)
    check(signer, query_params(urlencode(query)))


# -- tampering with the signature --------------------------------------------------------------


def test_every_bit_of_every_mac_byte_flipped_is_refused(signer: LinkSigner) -> None:
    query = make(signer)
    mac = base64.urlsafe_b64decode(query["sig"] + "=")
    assert len(mac) == 32
    for position in range(32):
        for bit in range(8):
            forged = bytearray(mac)
            forged[position] ^= 1 << bit
            sig = base64.urlsafe_b64encode(bytes(forged)).rstrip(b"=").decode()
            assert refused(signer, {**query, "sig": sig}) == "bad_signature"


def test_every_character_of_the_sig_altered_is_refused(signer: LinkSigner) -> None:
    query = make(signer)
    sig = query["sig"]
    for position in range(len(sig)):
        for flip in (1, 2, 4, 8, 16, 32, 64, 128, 0x100, 0xD800 ^ ord(sig[position])):
            char = chr(ord(sig[position]) ^ flip)
            forged = sig[:position] + char + sig[position + 1 :]
            assert refused(signer, {**query, "sig": forged}) in {
                "bad_signature",
                "malformed_parameter",
            }


def test_the_non_canonical_spelling_of_the_last_character_is_refused(signer: LinkSigner) -> None:
    """43 base64 characters carry 258 bits for 256: the spare low bits of the last character
    must not give a second valid spelling of one MAC."""
    query = make(signer)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    index = alphabet.index(query["sig"][-1])
    for spare in (1, 2, 3):
        forged = query["sig"][:-1] + alphabet[index ^ spare]
        assert base64.urlsafe_b64decode(forged + "=") == base64.urlsafe_b64decode(
            query["sig"] + "="
        )
        assert refused(signer, {**query, "sig": forged}) == "bad_signature"


def test_the_sig_truncated_at_every_length_is_refused(signer: LinkSigner) -> None:
    query = make(signer)
    for length in range(len(query["sig"])):
        assert refused(signer, {**query, "sig": query["sig"][:length]}) == "malformed_parameter"


@pytest.mark.parametrize("suffix", ["A", "=", "==", "AAAA", " ", "\n", "%3D", "\x00"])
def test_the_sig_extended_is_refused(signer: LinkSigner, suffix: str) -> None:
    query = make(signer)
    assert refused(signer, {**query, "sig": query["sig"] + suffix}) == "malformed_parameter"


def test_the_sig_as_hex_or_padded_base64_is_refused(signer: LinkSigner) -> None:
    query = make(signer)
    mac = base64.urlsafe_b64decode(query["sig"] + "=")
    for spelling in (mac.hex(), base64.b64encode(mac).decode(), query["sig"] + "="):
        assert refused(signer, {**query, "sig": spelling}) == "malformed_parameter"


def test_a_link_signed_with_another_key_is_refused(signer: LinkSigner) -> None:
    query = make(LinkSigner(OTHER_SECRET, MAX))
    assert refused(signer, query) == "bad_signature"
    check(LinkSigner(OTHER_SECRET, MAX), query)


# -- tampering with what the link is for -------------------------------------------------------


@pytest.mark.parametrize("delta", [1, -1, 3600, -3599])
def test_the_expiry_changed_is_refused(signer: LinkSigner, delta: int) -> None:
    query = make(signer)
    forged = {**query, "expires": str(int(query["expires"]) + delta)}
    assert refused(signer, forged) == "bad_signature"


def test_a_link_for_one_artifact_does_not_open_another(signer: LinkSigner) -> None:
    query = make(signer)
    other = "3f2a9c1e-0000-4000-8000-000000000002"
    assert refused(signer, query, artifact_id=other) == "bad_signature"
    assert refused(signer, query, artifact_id=LINK["artifact_id"][:8]) == "bad_signature"


def test_a_link_for_one_tenant_does_not_serve_another(signer: LinkSigner) -> None:
    query = make(signer)
    for tenant in ("acme2", "ACME", "", "acme ", "other"):
        assert refused(signer, query, tenant=tenant) == "bad_signature"


def test_replaced_content_invalidates_the_link(signer: LinkSigner) -> None:
    query = make(signer)
    new_hash = hashlib.sha256(b"other bytes").hexdigest()
    assert refused(signer, query, content_hash=new_hash) == "bad_signature"
    assert refused(signer, query, content_hash=HASH.upper()) == "bad_signature"


def test_a_version_link_opens_that_version_only(signer: LinkSigner) -> None:
    """A link to one version covers its number under a purpose of its own: it opens neither
    the current download (version None) nor another version, even of the same bytes."""
    v3 = signer.sign(expires_at=NOW + 3600, content_hash=HASH, version=3, **LINK)
    signer.verify(query=v3, now=NOW, content_hash=HASH, version=3, **LINK)
    for version in (None, 2, 4, 30, 33):
        with pytest.raises(LinkRefused) as info:
            signer.verify(query=v3, now=NOW, content_hash=HASH, version=version, **LINK)
        assert info.value.reason == "bad_signature"
    assert refused(signer, make(signer), version=1) == "bad_signature"  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        signer.sign(expires_at=NOW + 3600, content_hash=HASH, version="3", **LINK)  # type: ignore[arg-type]


def test_a_link_to_the_current_bytes_is_signed_as_before_versions(signer: LinkSigner) -> None:
    """Links outstanding when versions arrived keep working: no version, the same MAC input."""
    mac_input = signing._mac_input(LINK["artifact_id"], LINK["tenant"], HASH, NOW + 3600)
    expected = b"workflow-artifacts/download-link/v1\n" + b"".join(
        len(part).to_bytes(8, "big") + part
        for part in (
            b"GET",
            LINK["artifact_id"].encode(),
            b"acme",
            HASH.encode(),
            b"%d" % (NOW + 3600),
        )
    )
    assert mac_input == expected
    assert signing._mac_input(LINK["artifact_id"], "acme", HASH, NOW + 3600, None) == expected


def test_fields_cannot_bleed_into_each_other(signer: LinkSigner) -> None:
    """Length-prefixed fields: moving characters across a field boundary changes the MAC."""
    base = {"content_hash": "h", "expires_at": NOW + 60}
    sigs = {
        signer.sign(artifact_id="ab", tenant="c", **base)["sig"],  # type: ignore[arg-type]
        signer.sign(artifact_id="a", tenant="bc", **base)["sig"],  # type: ignore[arg-type]
        signer.sign(artifact_id="a\nb", tenant="c", **base)["sig"],  # type: ignore[arg-type]
        signer.sign(artifact_id="a", tenant="b\nc", **base)["sig"],  # type: ignore[arg-type]
        signer.sign(artifact_id="abc", tenant="", **base)["sig"],  # type: ignore[arg-type]
        signer.sign(artifact_id="", tenant="abc", **base)["sig"],  # type: ignore[arg-type]
    }
    assert len(sigs) == 6
    swapped = signer.sign(artifact_id="acme", tenant="x", content_hash="y", expires_at=NOW + 60)
    assert swapped != signer.sign(
        artifact_id="x", tenant="acme", content_hash="y", expires_at=NOW + 60
    )


# -- the parameter set -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["expires", "sig"])
def test_a_missing_parameter_is_refused(signer: LinkSigner, name: str) -> None:
    query = make(signer)
    del query[name]
    assert refused(signer, query) == "missing_parameter"
    assert refused(signer, {}) == "missing_parameter"
    assert refused(signer, query_params("")) == "missing_parameter"


@pytest.mark.parametrize(
    "extra", [("x", "1"), ("Sig", "a"), ("EXPIRES", "1"), ("", ""), ("tenant", "acme")]
)
def test_an_extra_parameter_is_refused(signer: LinkSigner, extra: tuple[str, str]) -> None:
    query = make(signer)
    assert refused(signer, {**query, extra[0]: extra[1]}) == "unexpected_parameter"
    assert refused(signer, [*query.items(), extra]) == "unexpected_parameter"


@pytest.mark.parametrize("name", ["expires", "sig"])
def test_a_duplicated_parameter_is_refused(signer: LinkSigner, name: str) -> None:
    query = make(signer)
    pairs = [*query.items(), (name, query[name])]  # the very same value, twice
    assert refused(signer, pairs) == "duplicate_parameter"
    text = "&".join(f"{k}={v}" for k, v in pairs)
    params = query_params(text)
    assert dict(params) == query  # a plain dict of it would hide the duplicate...
    assert refused(signer, params) == "duplicate_parameter"  # ...the multi-dict does not


def test_the_raw_query_text_is_a_programming_error(signer: LinkSigner) -> None:
    with pytest.raises(TypeError):
        check(signer, "expires=1&sig=x")


@pytest.mark.parametrize(
    "pairs", [[(1, "x")], [(None, "x")], [(b"sig", b"x"), (b"expires", b"1")], [(("a",), "b")]]
)
def test_non_string_names_are_refused(signer: LinkSigner, pairs: list[tuple[object, str]]) -> None:
    assert refused(signer, pairs) == "unexpected_parameter"


# -- expiry ------------------------------------------------------------------------------------


def test_expiry_is_exclusive(signer: LinkSigner) -> None:
    query = make(signer, expires_at=NOW + 10)
    check(signer, query, now=NOW + 9.999)
    assert refused(signer, query, now=NOW + 10) == "expired"  # expires == now
    assert refused(signer, query, now=NOW + 10.001) == "expired"
    assert refused(signer, query, now=NOW + 86400) == "expired"  # expires < now


def test_an_expiry_beyond_the_cap_is_refused_even_when_signed(signer: LinkSigner) -> None:
    at_cap = make(signer, expires_at=NOW + MAX)
    check(signer, at_cap)
    assert refused(signer, make(signer, expires_at=NOW + MAX + 1)) == "expiry_too_far"
    far = make(signer, expires_at=NOW + 100 * 365 * 86400)  # minted with a leaked key
    assert refused(signer, far) == "expiry_too_far"
    check(signer, far, now=NOW + 100 * 365 * 86400 - MAX)  # ...usable only within the cap
    assert refused(LinkSigner(SECRET, 3600), at_cap) == "expiry_too_far"  # the cap of now


def test_a_forged_link_is_refused_for_its_signature_not_its_expiry(signer: LinkSigner) -> None:
    """Expiry reasons are only given for a link whose signature matched."""
    query = make(signer, expires_at=NOW - 10)
    forged = {**query, "sig": "A" * 43}
    assert refused(signer, forged) == "bad_signature"
    assert refused(signer, query) == "expired"


def test_a_non_finite_now_is_a_programming_error(signer: LinkSigner) -> None:
    for now in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError):
            check(signer, make(signer), now=now)


BAD_EXPIRES = [
    "",
    "0",
    "-1",
    "-1700003600",
    "+1700003600",
    " 1700003600",
    "1700003600 ",
    "1700003600\n",
    "01700003600",
    "1_700_003_600",
    "1700003600.0",
    "1.7e9",
    "0x6553f100",
    "١٧٠٠٠٠٣٦٠٠",  # Arabic-Indic digits: int() would accept them
    "１７００００３６００",  # fullwidth digits  # noqa: RUF001
    "1700003600\x00",
    "\ud800",
    "🙂",
    "9" * 17,
    "9" * 5000,
    "9" * 100_000,
    "NaN",
    "inf",
]


@pytest.mark.parametrize("expires", BAD_EXPIRES)
def test_malformed_expires_values_are_refused(signer: LinkSigner, expires: str) -> None:
    query = make(signer)
    assert refused(signer, {**query, "expires": expires}) == "malformed_parameter"


@pytest.mark.parametrize(
    "sig", ["", "\ud800" * 43, "é" * 43, "🙂" * 43, "A" * 42 + "é", "=" * 43, "+" * 43, "/" * 43]
)
def test_malformed_sig_values_are_refused(signer: LinkSigner, sig: str) -> None:
    query = make(signer)
    assert refused(signer, {**query, "sig": sig}) == "malformed_parameter"


@pytest.mark.parametrize("value", [None, 1700003600, b"1700003600", ["1700003600"], 1.5])
def test_non_string_values_are_refused(signer: LinkSigner, value: object) -> None:
    query: dict[str, object] = {**make(signer)}
    for name in ("expires", "sig"):
        assert refused(signer, {**query, name: value}) == "malformed_parameter"


@given(st.text(max_size=40))
def test_any_expires_text_is_a_refusal_never_another_error(expires: str) -> None:
    signer = LinkSigner(SECRET, MAX)
    query = make(signer)
    if expires == query["expires"]:
        return
    with pytest.raises(LinkRefused):
        check(signer, {**query, "expires": expires})


@given(st.text(max_size=60))
def test_any_sig_text_is_a_refusal_never_another_error(sig: str) -> None:
    signer = LinkSigner(SECRET, MAX)
    query = make(signer)
    with pytest.raises(LinkRefused):
        check(signer, {**query, "sig": sig})


# -- the property ------------------------------------------------------------------------------

# Any Unicode, including "\n", "\x00" and lone surrogates (which st.text() leaves out).
texts = st.text(alphabet=st.characters() | st.characters(categories=["Cs"]), max_size=50)
fields = st.fixed_dictionaries(
    {
        "artifact_id": st.one_of(st.uuids().map(str), texts),
        "tenant": texts,
        "content_hash": st.one_of(texts, st.binary(min_size=32, max_size=32).map(bytes.hex)),
        "lifetime": st.integers(min_value=1, max_value=MAX),
    }
)
which = st.sampled_from(["artifact_id", "tenant", "content_hash", "expires"])


@settings(max_examples=300)
@given(fields, which, st.data())
def test_sign_then_verify_passes_and_any_one_change_fails(
    link: dict[str, object], field: str, data: st.DataObject
) -> None:
    signer = LinkSigner(SECRET, MAX)
    lifetime_ = link.pop("lifetime")
    assert isinstance(lifetime_, int)
    expires_at = NOW + lifetime_
    names = {k: str(v) for k, v in link.items()}
    query = signer.sign(expires_at=expires_at, **names)  # type: ignore[arg-type]
    signer.verify(query=query, now=NOW, **names)  # type: ignore[arg-type]
    with pytest.raises(LinkRefused):  # one spelling: reordered is another link
        signer.verify(query=dict(reversed(query.items())), now=NOW, **names)  # type: ignore[arg-type]

    if field == "expires":
        changed = data.draw(
            st.integers(min_value=NOW + 1, max_value=NOW + MAX).filter(lambda e: e != expires_at)
        )
        forged = {**query, "expires": str(changed)}
        with pytest.raises(LinkRefused):
            signer.verify(query=forged, now=NOW, **names)  # type: ignore[arg-type]
    else:
        other = data.draw(texts.filter(lambda t: t != names[field]))
        with pytest.raises(LinkRefused):
            signer.verify(query=query, now=NOW, **{**names, field: other})  # type: ignore[arg-type]
    with pytest.raises(LinkRefused):
        LinkSigner(OTHER_SECRET, MAX).verify(query=query, now=NOW, **names)  # type: ignore[arg-type]


# -- sign() and the constructor ----------------------------------------------------------------


@pytest.mark.parametrize("expires_at", [0, -1, 10**16, True, 1.5, "1700003600"])
def test_sign_refuses_an_expiry_verify_could_never_accept(
    signer: LinkSigner, expires_at: object
) -> None:
    with pytest.raises((TypeError, ValueError)):
        signer.sign(expires_at=expires_at, content_hash=HASH, **LINK)  # type: ignore[arg-type]


def test_sign_refuses_non_string_fields(signer: LinkSigner) -> None:
    with pytest.raises(TypeError):
        signer.sign(artifact_id=1, tenant="t", content_hash=HASH, expires_at=NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize("secret", [b"", b"x" * 31, "x" * 32, bytearray(32)])
def test_a_short_or_non_bytes_secret_is_refused(secret: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        LinkSigner(secret, MAX)  # type: ignore[arg-type]


@pytest.mark.parametrize("max_lifetime", [0, 0.5, -1, float("nan"), float("inf")])
def test_a_max_lifetime_under_a_second_is_refused(max_lifetime: float) -> None:
    with pytest.raises(ValueError):
        LinkSigner(SECRET, max_lifetime)


def test_the_secret_never_shows_in_repr() -> None:
    signer = LinkSigner(b"\xab" * 32, MAX)
    assert repr(signer) == str(signer) == "LinkSigner(max_lifetime=604800)"
    assert not hasattr(signer, "__dict__")


def test_refusals_carry_a_reason_and_a_sentence(signer: LinkSigner) -> None:
    with pytest.raises(LinkRefused) as info:
        check(signer, make(signer, expires_at=NOW))
    assert info.value.reason == "expired"
    assert str(info.value) == "The link has expired."


# -- lifetime() --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "expected"),
    [(None, 3600), (60, 60), (1, 1), (0, 1), (-5, 1), (MAX, MAX), (MAX + 1, MAX), (10**30, MAX)],
)
def test_lifetime_clamps_to_one_second_and_the_cap(requested: int | None, expected: int) -> None:
    assert lifetime(requested, 3600, MAX) == expected


def test_lifetime_clamps_the_default_too() -> None:
    assert lifetime(None, MAX * 2, MAX) == MAX
    assert lifetime(None, 0, MAX) == 1
    with pytest.raises(ValueError):
        lifetime(None, 3600, 0)


def test_the_settings_defaults_and_the_signer_they_make(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    assert (s.signing_key, s.download_url_ttl, s.download_url_max_ttl) == (None, 3600, 7 * 86400)
    assert lifetime(None, int(s.download_url_ttl), int(s.download_url_max_ttl)) == 3600
    made = signing.signer_from_settings(s)
    assert made.max_lifetime == 7 * 86400
    now = time.time()
    expires_at = int(now) + lifetime(10**9, int(s.download_url_ttl), int(s.download_url_max_ttl))
    query = made.sign(expires_at=expires_at, content_hash=HASH, **LINK)
    made.verify(query=query, now=now, content_hash=HASH, **LINK)  # a full-cap link is fine


def test_the_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTIFACTS_SIGNING_KEY", "ab" * 32)
    monkeypatch.setenv("ARTIFACTS_DOWNLOAD_URL_TTL", "15m")
    monkeypatch.setenv("ARTIFACTS_DOWNLOAD_URL_MAX_TTL", "1d")
    s = Settings()
    assert s.signing_key is not None and s.signing_key.get_secret_value() == "ab" * 32
    assert "ab" * 32 not in repr(s)
    assert (s.download_url_ttl, s.download_url_max_ttl) == (900, 86400)
    monkeypatch.setenv("ARTIFACTS_DOWNLOAD_URL_TTL", "0")
    with pytest.raises(ValueError):
        Settings()


# -- the secret: ARTIFACTS_SIGNING_KEY ---------------------------------------------------------

KEY = bytes.fromhex("00112233445566778899aabbccddeeff" * 2)


@pytest.mark.parametrize(
    "text",
    [
        KEY.hex(),
        KEY.hex().upper(),
        f"  {KEY.hex()}\n",
        base64.b64encode(KEY).decode(),  # openssl rand -base64 32: padded, standard alphabet
        base64.b64encode(KEY).decode().rstrip("="),
        base64.urlsafe_b64encode(KEY).decode(),
        base64.urlsafe_b64encode(KEY).decode().rstrip("="),
    ],
)
def test_the_env_key_as_hex_or_base64(text: str) -> None:
    assert decode_signing_key(text) == KEY


def test_a_longer_env_key_is_used_whole() -> None:
    assert decode_signing_key((KEY * 2).hex()) == KEY * 2
    assert decode_signing_key(base64.b64encode(KEY + b"!").decode()) == KEY + b"!"


def test_hex_digits_only_is_read_as_hex_even_when_base64_would_be_long_enough() -> None:
    # 48 hex digits are 24 bytes as hex (too short) but 36 as base64: hex wins, so refused.
    with pytest.raises(SigningKeyError, match="only 24 bytes"):
        decode_signing_key("ab" * 24)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        KEY.hex()[:-2],  # 31 bytes of hex
        KEY.hex()[:-1],  # odd number of hex digits
        base64.b64encode(KEY[:-1]).decode(),  # 31 bytes of base64
        "correct horse battery staple, and then some more words",  # a passphrase
        "x" * 10,
        "A" * 45,  # 45 % 4 == 1: no base64 string has that length
        "é" * 64,
        base64.b64encode(KEY).decode() + "===",
    ],
)
def test_bad_env_keys_are_refused_without_echoing_them(text: str) -> None:
    with pytest.raises(SigningKeyError) as info:
        decode_signing_key(text)
    assert "ARTIFACTS_SIGNING_KEY" in str(info.value)
    if text.strip():
        assert text.strip() not in str(info.value)


def test_the_env_key_takes_precedence_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "signing.key").write_bytes(b"f" * 32)
    os.chmod(tmp_path / "signing.key", 0o644)  # would be refused, but is not even read
    monkeypatch.setenv("ARTIFACTS_SIGNING_KEY", KEY.hex())
    monkeypatch.setenv("ARTIFACTS_DATA_DIR", str(tmp_path))
    assert load_signing_secret(Settings()) == KEY

    fresh = tmp_path / "fresh"
    monkeypatch.setenv("ARTIFACTS_DATA_DIR", str(fresh))
    assert load_signing_secret(Settings()) == KEY
    assert not (fresh / "signing.key").exists()  # no file is made when the env has the key


def test_a_short_env_key_is_refused_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARTIFACTS_SIGNING_KEY", "ab" * 31)
    with pytest.raises(SigningKeyError, match="only 31 bytes"):
        load_signing_secret(Settings(data_dir=tmp_path))
    assert not (tmp_path / "signing.key").exists()  # no silent fallback to a file


# -- the secret: <data_dir>/signing.key --------------------------------------------------------


def test_the_key_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"  # does not exist yet
    first = load_signing_secret(Settings(data_dir=data_dir))
    path = data_dir / "signing.key"
    assert len(first) == 32
    assert path.read_bytes() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in data_dir.iterdir()] == ["signing.key"]  # no temp file left
    assert load_signing_secret(Settings(data_dir=data_dir)) == first
    other = load_signing_secret(Settings(data_dir=tmp_path / "elsewhere"))
    assert other != first


def test_the_key_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        load_signing_secret(Settings(data_dir=tmp_path))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "signing.key").stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o666, 0o777])
def test_a_key_file_others_can_reach_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "signing.key"
    path.write_bytes(os.urandom(32))
    os.chmod(path, mode)
    with pytest.raises(SigningKeyError, match=f"mode {mode:04o}.*chmod 600") as info:
        load_signing_secret(Settings(data_dir=tmp_path))
    assert str(path) in str(info.value)
    assert path.read_bytes().hex() not in str(info.value)


def test_a_0400_key_file_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    path.write_bytes(b"k" * 40)
    os.chmod(path, 0o400)
    assert load_signing_secret(Settings(data_dir=tmp_path)) == b"k" * 40


@pytest.mark.parametrize("content", [b"", b"k" * 31])
def test_a_short_key_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "signing.key"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(SigningKeyError, match="delete it"):
        load_signing_secret(Settings(data_dir=tmp_path))


def test_a_directory_in_place_of_the_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "signing.key").mkdir(mode=0o700)
    with pytest.raises(SigningKeyError, match="not a regular file"):
        load_signing_secret(Settings(data_dir=tmp_path))


def test_the_loser_of_a_creation_race_reads_the_winners_key(tmp_path: Path) -> None:
    """The moment that matters, made certain: the file appears between our 'not there' and our
    link(). Our link() fails and the winner's key is the one returned."""
    path = tmp_path / "signing.key"
    winner = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, winner)
    os.close(fd)
    assert signing._create_key_file(path) == winner
    assert path.read_bytes() == winner
    assert [p.name for p in tmp_path.iterdir()] == ["signing.key"]  # the loser's temp is gone


def _load_in_threads(data_dir: Path, count: int) -> list[bytes | BaseException]:
    barrier = threading.Barrier(count)
    results: list[bytes | BaseException] = []

    def load() -> None:
        barrier.wait()  # all at once: several see no file and race to create it
        try:
            results.append(load_signing_secret(Settings(data_dir=data_dir)))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=load) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_loads_in_threads_agree(tmp_path: Path) -> None:
    for round_ in range(20):
        data_dir = tmp_path / str(round_)
        data_dir.mkdir()
        results = _load_in_threads(data_dir, 8)
        assert len(results) == 8
        assert len(set(results)) == 1, results
        assert results[0] == (data_dir / "signing.key").read_bytes()
        assert [p.name for p in data_dir.iterdir()] == ["signing.key"]


def test_the_key_is_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    key = load_signing_secret(Settings(data_dir=tmp_path))
    assert "signing.key" in caplog.text
    for spelling in (key.hex(), base64.b64encode(key).decode(), repr(key)):
        assert spelling not in caplog.text
