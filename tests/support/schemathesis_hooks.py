"""Hooks for tests/system/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS): where a rule
of the API cannot be written in OpenAPI, or Schemathesis reads the document differently from the
API, the harness behaves like a client that follows the rule. Each hook names its rule.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs
import schemathesis
from schemathesis.core.failures import AcceptedNegativeData, Failure
from schemathesis.core.parameters import ParameterLocation
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.transport import SerializationContext
from schemathesis.transport.requests import REQUESTS_TRANSPORT, multipart_serializer
from schemathesis.transport.serialization import Binary, serialize_binary

SCHEMA = Path(__file__).resolve().parent.parent.parent / "openapi" / "openapi.json"
HEX64 = re.compile(r"[0-9a-fA-F]{64}")
VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}")  # app/idempotency.py: IdempotencyKey
EVENT_ID = re.compile(r"[0-9]{0,18}")  # app/events.py: EVENT_ID
_sequence = itertools.count(1)


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: Any) -> None:
    """An `Idempotency-Key` names one request: the same key on a different request is, per the
    IETF draft and app/idempotency.py, a 422 idempotency_key_reused. Schemathesis draws keys
    from a small space ("0", "00", ...) and reuses them across unrelated requests; a real client
    mints a fresh key per request, and so does this hook, for every key the document calls
    valid (an invalid one, sent to test rejection, goes out unchanged). Replaying one key is
    tests/test_idempotency.py's job."""
    headers = case.headers or {}
    for name, value in list(headers.items()):
        if name.lower() == "idempotency-key" and isinstance(value, str):
            if VALID_KEY.fullmatch(value):
                headers[name] = f"st-{next(_sequence)}"


@REQUESTS_TRANSPORT.serializer("multipart/form-data")
def form_serializer(ctx: SerializationContext, value: Any) -> dict[str, Any]:
    """Schemathesis's own multipart encoding, with three rules a multipart create follows.

    The fields come first and the `file` part last: a field after the file is a 422
    field_after_file, so that a create is validated before one byte is stored, and the
    properties of a JSON Schema object have no order.

    A part whose `encoding` is application/json (derived_from, metadata) holds its value as one
    JSON text. Schemathesis does so for an object, but sends an array of strings as one part per
    item, which OpenAPI 3.1 leaves open and this API does not read.

    A `sha256` field declares the file's digest (a mismatch is a 422 digest_mismatch): where the
    case has a well-formed one, the client sends the digest of the bytes it sends.

    Serialising runs after Schemathesis has judged the case valid or invalid, so neither
    changes that judgement."""
    if isinstance(value, dict):
        value = dict(value)
        for name in ("derived_from", "metadata"):
            if isinstance(value.get(name), list):
                value[name] = json.dumps(value[name])
        if "file" in value:
            value["file"] = value.pop("file")  # dict order is the order of the parts
            sha256 = value.get("sha256")
            if isinstance(sha256, str) and HEX64.fullmatch(sha256):
                value["sha256"] = hashlib.sha256(serialize_binary(value["file"])).hexdigest()
    return multipart_serializer(ctx, value)


# pydantic's lax bool, which FastAPI and the Syntropic reference (this API's wire contract) use
# for JSON bodies too: `"is_primary_deliverable": 1` works against both. A form field is text, so
# there `0` goes out as "0", one of the spellings of false.
BODIES_READ_LAXLY = ("application/json", "multipart/form-data")
LAX_BOOLEANS: dict[Any, bool] = {
    **dict.fromkeys(("0", "off", "f", "false", "n", "no"), False),
    **dict.fromkeys(("1", "on", "t", "true", "y", "yes"), True),
}


def _as_pydantic_bool(value: Any) -> Any:
    if type(value) in (int, float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in LAX_BOOLEANS:
        return LAX_BOOLEANS[value.strip().lower()]
    return value


@cache
def _body_schema(path: str, method: str, media_type: str) -> tuple[Any, frozenset[str]]:
    """The body's validator, and the names of its properties that take a boolean."""
    document = json.loads(SCHEMA.read_text())
    schema = document["paths"][path][method]["requestBody"]["content"][media_type]["schema"]
    resolved = schema
    while "$ref" in resolved:  # "#/components/schemas/Name"
        ref, resolved = resolved["$ref"], document
        for part in ref.removeprefix("#/").split("/"):
            resolved = resolved[part]
    booleans = frozenset(
        name
        for name, prop in resolved.get("properties", {}).items()
        if "boolean" in json.dumps(prop.get("type")) + json.dumps(prop.get("anyOf"))
    )
    validator = jsonschema_rs.validator_for({**schema, "components": document["components"]})
    return validator, booleans


def _answers_a_reference(response: schemathesis.Response) -> bool:
    """A 422 that says the data points at something that is not there: a `derived_from` id with
    no live artifact (artifact_not_found at ["body", "derived_from", i])."""
    if response.status_code != 422:
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    detail = body.get("detail") if isinstance(body, dict) else None
    return (
        isinstance(detail, list)
        and bool(detail)
        and all(
            isinstance(item, dict)
            and item.get("type") == "artifact_not_found"
            and list(item.get("loc", []))[:2] == ["body", "derived_from"]
            for item in detail
        )
    )


@schemathesis.hook
def filter_failure(
    context: schemathesis.HookContext,
    failure: Failure,
    case: schemathesis.Case,
    response: schemathesis.Response,
) -> bool:
    """Keep every failure but three kinds, each a rule no JSON Schema can state.

    positive_data_acceptance, when the 422 says the data refers to what does not exist: the
    parents in `derived_from` must be live artifacts. The check already takes a 404 or 409 for
    "valid, but not here"; this API answers an unknown parent as a 422 item at ["body",
    "derived_from", i] (app/errors.py), beside its other input errors. Any other 422 keeps the
    failure.

    negative_data_rejection, for a malformed Last-Event-ID sent with `after`: the query wins
    and the header is not read, on purpose (tests/test_events.py pins it), which a parameter's
    schema cannot say.

    negative_data_rejection, for a JSON or form body whose only invalid values are boolean
    properties sent as something pydantic reads as a boolean (0, 1, "yes", ...), and that is
    valid once they are read so. The server accepts those on purpose (see LAX_BOOLEANS); any
    other invalid value in the body, or in another part of the request, keeps the failure."""
    keep = _keep(failure, case, response)
    if not keep:  # what was dropped, for a reader of the run: filtered.jsonl in its directory
        with open("filtered.jsonl", "a") as log:
            record = {
                "operation": case.operation.label,
                "failure": type(failure).__name__,
                "status": response.status_code,
                "body": case.body if isinstance(case.body, dict | list | str | int) else None,
                "answer": response.text_lossy()[:300],
            }
            log.write(json.dumps(record, default=repr) + "\n")
    return keep


def _last_event_id_unread(case: schemathesis.Case, negative: set[ParameterLocation]) -> bool:
    """GET /store/events with a valid `after` (which wins, so Last-Event-ID is not read) and valid
    declared query parameters: what is left invalid is the header and, at most, undeclared
    query parameters, which the server ignores (as Schemathesis itself allows)."""
    if not negative <= {ParameterLocation.HEADER, ParameterLocation.QUERY}:
        return False
    query = case.query or {}
    after, limit = query.get("after"), query.get("limit", 100)
    if not isinstance(after, str) or EVENT_ID.fullmatch(after) is None:
        return False
    if not (isinstance(limit, int) or (isinstance(limit, str) and limit.isascii())):
        return False
    try:
        if not 1 <= int(limit) <= 1000:
            return False
    except ValueError:
        return False
    return isinstance(query.get("workflow_id", ""), str)


def _keep(failure: Failure, case: schemathesis.Case, response: schemathesis.Response) -> bool:
    if isinstance(failure, RejectedPositiveData):
        return not _answers_a_reference(response)
    if not isinstance(failure, AcceptedNegativeData) or case.meta is None:
        return True
    negative = {loc for loc, part in case.meta.components.items() if part.mode.is_negative}
    if case.operation.label == "GET /store/events" and ParameterLocation.HEADER in negative:
        return not _last_event_id_unread(case, negative)
    if negative != {ParameterLocation.BODY} or case.media_type not in BODIES_READ_LAXLY:
        return True
    if not isinstance(case.body, dict):
        return True
    validator, booleans = _body_schema(case.operation.path, case.method.lower(), case.media_type)
    read = {
        key: _as_pydantic_bool(value) if key in booleans else value
        for key, value in case.body.items()
    }
    if all(read[key] is value for key, value in case.body.items()):
        return True  # no lax boolean in it: a real failure
    # a file part's bytes are a string with format: binary to the schema
    read = {k: "" if isinstance(v, bytes | Binary) else v for k, v in read.items()}
    return not validator.is_valid(read)
