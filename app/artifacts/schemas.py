"""Request and response bodies of the artifacts API.

Inputs are pydantic models validated with a context (allowed artifact types and the input limits
of `input_limits`) so that their 422s are exactly FastAPI's: a limit set at run time fails with
pydantic's own error (`string_too_long`, `too_long`), its number in `msg` and `ctx`. Outputs
are documented as models but built as plain dicts on the hot path (see `record`, `summary`): the
tests pin their exact keys.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi.exceptions import RequestValidationError
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

from app.artifacts.body import parse_json
from app.settings import Settings
from storage.records import Artifact, Summary, us_to_iso


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
                except RequestValidationError:
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


# -- responses (documentation models; bodies are built by the functions below) ----------------


class ArtifactSummary(BaseModel):
    id: str
    workflow_id: str
    phase_id: str | None
    artifact_type: str
    title: str
    size_bytes: int
    created_at: str
    session_id: str | None
    content_type: str
    content_hash: str
    is_primary_deliverable: bool


class ArtifactRecord(BaseModel):
    id: str
    workflow_id: str
    phase_id: str | None
    session_id: str | None
    artifact_type: str
    is_primary_deliverable: bool
    content: str | None
    content_type: str
    content_hash: str
    size_bytes: int
    title: str
    derived_from: list[str]
    created_at: str
    created_by: str | None
    metadata: dict[str, Any]
    filename: str | None
    updated_at: str
    download_url: str


class Created(BaseModel):
    id: str
    title: str
    artifact_type: str
    status: str = "created"
    content_hash: str
    size_bytes: int
    created_at: str


class ContentBody(BaseModel):
    artifact_id: str
    content: str | None
    content_type: str
    size_bytes: int
    content_hash: str
    download_url: str


class Updated(BaseModel):
    artifact_id: str
    status: str = "updated"


class Deleted(BaseModel):
    artifact_id: str
    status: str = "deleted"


class Uploaded(BaseModel):
    artifact_id: str
    storage_url: str
    status: str = "uploaded"
    content_hash: str
    size_bytes: int
    content_type: str


def summary(a: Artifact | Summary) -> dict[str, Any]:
    return {
        "id": a.id,
        "workflow_id": a.workflow_id,
        "phase_id": a.phase_id,
        "artifact_type": a.artifact_type,
        "title": a.title,
        "size_bytes": a.size_bytes,
        "created_at": us_to_iso(a.created_at),
        "session_id": a.session_id,
        "content_type": a.content_type,
        "content_hash": a.content_hash,
        "is_primary_deliverable": a.is_primary_deliverable,
    }


def record(a: Artifact, content: str | None, download_url: str) -> dict[str, Any]:
    return {
        "id": a.id,
        "workflow_id": a.workflow_id,
        "phase_id": a.phase_id,
        "session_id": a.session_id,
        "artifact_type": a.artifact_type,
        "is_primary_deliverable": a.is_primary_deliverable,
        "content": content,
        "content_type": a.content_type,
        "content_hash": a.content_hash,
        "size_bytes": a.size_bytes,
        "title": a.title,
        "derived_from": list(a.derived_from or ()),
        "created_at": us_to_iso(a.created_at),
        "created_by": a.created_by,
        "metadata": a.metadata,
        "filename": a.filename,
        "updated_at": us_to_iso(a.updated_at),
        "download_url": download_url,
    }
