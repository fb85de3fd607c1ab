"""The JSON create's msgspec happy path (app/artifacts/schemas.fast_create) accepts only what
the pydantic model accepts, with the same values: whatever it declines goes to the model, which
answers the 422 items."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from app.artifacts import schemas
from app.artifacts.body import parse_json, validate
from app.artifacts.controller import validation_context
from app.errors import InvalidInput
from app.settings import Settings

SETTINGS = Settings(max_title_chars=20, max_id_chars=36, max_derived_from=3, max_metadata_bytes=60)
CONTEXT = validation_context(SETTINGS)

text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "a", "x\x00y", "\u00e9t\u00e9", "\U0001f389", "A" * 36, "A" * 37]),
)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
member_values: dict[str, Any] = {
    "workflow_id": text | st.none() | st.integers(),
    "artifact_type": st.sampled_from(["text", "TEXT", "Markdown", "nope", ""]) | text,
    "title": text | st.none(),
    "content": text | st.integers(),
    "phase_id": text | st.none(),
    "session_id": text | st.none(),
    "created_by": text | st.none(),
    "is_primary_deliverable": st.booleans() | st.sampled_from([0, 1, "true", None]),
    "derived_from": st.lists(text, max_size=5) | st.none() | text,
    "metadata": st.dictionaries(text, json_value, max_size=4) | st.lists(text) | st.none(),
    "content_type": st.sampled_from(["text/plain", "", "a/b"]) | text | st.none(),
    "unknown": text,
}
required = {"workflow_id": "wf", "artifact_type": "text", "title": "t", "content": "x"}


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    body = {k: v for k, v in required.items() if draw(st.booleans()) or draw(st.booleans())}
    for name in draw(st.lists(st.sampled_from(sorted(member_values)), max_size=6, unique=True)):
        body[name] = draw(member_values[name])
    raw = json.dumps(body, ensure_ascii=draw(st.booleans()))
    return draw(st.sampled_from([raw, raw.replace("{", "{ ", 1)])).encode()


def slow(body: bytes) -> schemas.CreateArtifact | None:
    try:
        return validate(schemas.CreateArtifact, parse_json(body), CONTEXT)
    except InvalidInput:
        return None


@settings(max_examples=600, deadline=None)
@given(body=bodies())
def test_the_fast_path_accepts_only_what_the_model_accepts_with_the_same_values(
    body: bytes,
) -> None:
    fast = schemas.fast_create(body, SETTINGS)
    if fast is None:
        return  # declined: the model decides
    reference = slow(body)
    assert reference is not None, body
    assert msgspec.structs.asdict(fast) == reference.model_dump(), body


def test_the_fast_path_takes_a_plain_create_and_declines_what_only_the_slow_path_can_judge() -> (
    None
):
    plain = b'{"workflow_id":"wf","artifact_type":"TEXT","title":"t","content":"x"}'
    fast = schemas.fast_create(plain, SETTINGS)
    assert fast is not None and fast.artifact_type == "text"
    for declined in (
        b"\xef\xbb\xbf" + plain,  # a BOM: json.loads takes it
        plain.replace(b'"t"', b'"\\ud800"'),  # a lone surrogate: a 422 json_invalid
        plain[:-1] + b',"metadata":{"f":1e400}}',  # out of range: a 422 json_invalid
        plain[:-1] + b',"metadata":' + b'{"a":' * 300 + b"1" + b"}" * 301,  # too deep
        plain[:-1] + b',"metadata":' + b'{"a":' * 5000 + b"1" + b"}" * 5001,  # past msgspec's
        plain[:-1] + b',"is_primary_deliverable":"true"}',  # the model coerces it
        plain[:-1] + b',"extra":1}',  # the model names it
    ):
        assert schemas.fast_create(declined, SETTINGS) is None, declined
