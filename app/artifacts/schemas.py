"""Request bodies of the artifacts API (the answers' shapes are in app/wire.py).

Inputs are pydantic models validated with a context (allowed artifact types and the input limits
of `input_limits`) so that their 422 items are exactly the contract's: a limit set at run time
fails with pydantic's own error (`string_too_long`, `too_long`), its number in `msg` and `ctx`.
pydantic runs only on bodies (JSON creates and updates, form fields), never on a read.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import msgspec
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, PydanticKnownError

from app.artifacts.body import parse_json, too_deep
from app.errors import InvalidInput
from app.settings import Settings


def no_nul(value: str) -> str:
    """PostgreSQL text cannot hold NUL: refuse it on every backend alike (422, not a 5xx)."""
    if "\x00" in value:
        raise PydanticCustomError("string_nul", "String should not contain NUL characters")
    return value


NO_NUL = Field(json_schema_extra={"pattern": "^[^\\x00]*$"})  # documents no_nul (its 422 stays)
Text = Annotated[str, AfterValidator(no_nul), NO_NUL]
NonEmpty = Annotated[str, Field(min_length=1), AfterValidator(no_nul), NO_NUL]

_LIMITS = ("max_title_chars", "max_id_chars", "max_derived_from", "max_metadata_bytes")


def input_limits(settings: Settings) -> dict[str, int]:
    """The limits a create or update body is held to: part of its validation context."""
    return {name: getattr(settings, name) for name in _LIMITS}


def _limit(info: ValidationInfo, name: str) -> int:
    """A limit from the validation context; the setting's default when the context has none."""
    value = (info.context or {}).get(name)
    return value if isinstance(value, int) else int(Settings.model_fields[name].default)


def _at_most(name: str) -> Any:
    """An after-validator: a string of at most the `name` limit's characters, as max_length."""

    def check(value: str, info: ValidationInfo) -> str:
        limit = _limit(info, name)
        if len(value) > limit:
            raise PydanticKnownError("string_too_long", {"max_length": limit})
        return value

    return AfterValidator(check)


def _documented(name: str) -> Any:
    """The default limit and the no-NUL rule, in the schema (the checks above enforce them)."""
    default = int(Settings.model_fields[name].default)
    return Field(json_schema_extra={"pattern": "^[^\\x00]*$", "maxLength": default})


Title = Annotated[
    str, AfterValidator(no_nul), _at_most("max_title_chars"), _documented("max_title_chars")
]
Id = Annotated[str, AfterValidator(no_nul), _at_most("max_id_chars"), _documented("max_id_chars")]
IDS = "at most ARTIFACTS_MAX_ID_CHARS (255) characters"
# A media type with its parameters; held to the id limit (RFC 6838 names are <= 127 each).
NonEmptyId = Annotated[
    str,
    Field(min_length=1),
    AfterValidator(no_nul),
    _at_most("max_id_chars"),
    _documented("max_id_chars"),
]
ContentType = NonEmptyId


def _expected(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def check_artifact_type(value: str, allowed: tuple[str, ...]) -> str:
    """Case-insensitive; an unknown type fails like a pydantic enum."""
    lowered = value.lower()
    if lowered not in allowed:
        expected = _expected(allowed)
        raise PydanticCustomError("enum", "Input should be {expected}", {"expected": expected})
    return lowered


def _check_metadata(value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    limit = _limit(info, "max_metadata_bytes")
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > limit:
        raise PydanticCustomError(
            "metadata_too_large",
            "Metadata must encode to at most {limit} bytes of JSON, not {size}",
            {"limit": limit, "size": size},
        )
    return value


class CreateFields(BaseModel):
    """What every create carries, as JSON members or as multipart form fields."""

    model_config = ConfigDict(extra="forbid")

    workflow_id: Id = Field(min_length=1, description=IDS)
    artifact_type: str = Field(description="one of the artifact types, case-insensitive")
    title: Title = Field(description="at most ARTIFACTS_MAX_TITLE_CHARS (1000) characters")
    phase_id: Id | None = Field(None, description=IDS)
    session_id: Id | None = Field(None, description=IDS)
    is_primary_deliverable: bool = False
    derived_from: list[Id] = Field(
        default_factory=list,
        description="ids of live parents, at most ARTIFACTS_MAX_DERIVED_FROM (100)",
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="at most ARTIFACTS_MAX_METADATA_BYTES (64 KiB) encoded as JSON",
    )
    created_by: Id | None = Field(None, description=IDS)

    @field_validator("artifact_type")
    @classmethod
    def _type(cls, value: str, info: ValidationInfo) -> str:
        return check_artifact_type(value, (info.context or {}).get("artifact_types", ()))

    @field_validator("derived_from", mode="before")
    @classmethod
    def _parents(cls, value: Any, info: ValidationInfo) -> Any:
        """Counted before any entry is validated, so a huge list fails at once (as max_length)."""
        limit = _limit(info, "max_derived_from")
        if isinstance(value, list | tuple) and len(value) > limit:
            ctx = {"field_type": "List", "max_length": limit, "actual_length": len(value)}
            raise PydanticKnownError("too_long", ctx)
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        return _check_metadata(value, info)


class CreateArtifact(CreateFields):
    """POST /artifacts as JSON: the content is text, stored as its UTF-8 bytes."""

    content: str = Field(min_length=1)
    content_type: ContentType = "text/markdown"


class CreateForm(CreateFields):
    """POST /artifacts as multipart/form-data: these fields, then one `file` part.
    `derived_from` and `metadata` are JSON texts; `content_type` defaults to the part's."""

    content_type: ContentType | None = None
    sha256: str | None = Field(None, description="hex sha256 the file's bytes must have")

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> dict[str, Any]:
        """Form text -> the shapes the model validates (JSON members decoded where they parse)."""
        data: dict[str, Any] = dict(fields)
        for name in ("derived_from", "metadata"):
            if name in data:
                try:  # parse_json: no NaN/inf, bounded depth, no lone surrogates
                    data[name] = parse_json(data[name].encode())
                except InvalidInput:
                    pass  # left as text: the model answers list_type / dict_type
        return data


class UpdateArtifact(BaseModel):
    """PUT /artifacts/{id}: at least one field."""

    model_config = ConfigDict(extra="forbid")

    title: Title | None = None
    metadata: dict[str, Any] | None = None
    is_primary_deliverable: bool | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        return None if value is None else _check_metadata(value, info)

    @model_validator(mode="after")
    def _not_empty(self) -> UpdateArtifact:
        if self.title is None and self.metadata is None and self.is_primary_deliverable is None:
            raise PydanticCustomError(
                "no_fields",
                "At least one of title, metadata, is_primary_deliverable is required",
            )
        return self


# -- the JSON create's happy path: msgspec, no pydantic ------------------------------------------


class CreateArtifactIn(msgspec.Struct, forbid_unknown_fields=True):
    """POST /artifacts as JSON, as msgspec decodes it (the members of CreateArtifact)."""

    workflow_id: str
    artifact_type: str
    title: str
    content: str
    phase_id: str | None = None
    session_id: str | None = None
    is_primary_deliverable: bool = False
    derived_from: list[str] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    created_by: str | None = None
    content_type: str = "text/markdown"


_CREATE = msgspec.json.Decoder(CreateArtifactIn)
_MAX_METADATA_DEPTH = 255  # the body is one level: parse_json's limit of 256 in all


def _fits(value: str | None, limit: int, *, required: bool = False) -> bool:
    if value is None:
        return not required
    return (len(value) >= 1 or not required) and len(value) <= limit and "\x00" not in value


def fast_create(body: bytes, settings: Settings) -> CreateArtifactIn | None:
    """The body of a JSON create, or None: then parse_json and the pydantic model decide (and
    answer the 422 items). Accepts only what they accept, with the same values: UTF-8 JSON that
    msgspec decodes strictly into CreateArtifactIn (no unknown member, no coercion; a BOM, a
    lone surrogate, NaN or a number out of range are left to the slow path), every limit and
    the no-NUL rule checked here, the artifact type lowercased as the model does."""
    try:
        data = _CREATE.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):  # deep: the slow path
        return None
    ids = settings.max_id_chars
    if not (
        _fits(data.workflow_id, ids, required=True)
        and _fits(data.phase_id, ids)
        and _fits(data.session_id, ids)
        and _fits(data.created_by, ids)
        and _fits(data.content_type, ids, required=True)
        and _fits(data.title, settings.max_title_chars)
        and data.content
        and len(data.derived_from) <= settings.max_derived_from
        and all(_fits(parent, ids) for parent in data.derived_from)
        and data.artifact_type.lower() in settings.artifact_types
    ):
        return None
    metadata = data.metadata
    if metadata:
        if too_deep(metadata, _MAX_METADATA_DEPTH):
            return None
        size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())
        if size > settings.max_metadata_bytes:
            return None
    if data.artifact_type not in settings.artifact_types:
        data.artifact_type = data.artifact_type.lower()
    return data
