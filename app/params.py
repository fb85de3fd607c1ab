"""Query and header parameters: declared once per route as a pydantic model, parsed fast.

A route's parameters are a `Params` model (`Query` fields by name, `Header` fields by their
lowercase header name as alias). The happy path never runs pydantic: each field's kind (plain
text, bounded int, bool, one of a few literals) has a check that accepts only canonical values,
and it yields what pydantic would. Anything else (a missing required value, `1.5` for an int,
`yes` for a bool, a date) goes through pydantic, which either accepts it or raises the exact 422
items the contract pins (`loc` = ["query", name] or ["header", name]).

A repeated query parameter counts by its last value, a repeated header by its first, as the
contract's reference server reads them.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin
from urllib.parse import parse_qsl

import annotated_types
from litestar import Request
from litestar.connection import ASGIConnection
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from app.errors import InvalidInput

P = TypeVar("P", bound="Params")
_SLOW = object()
_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})


class Params(BaseModel):
    """Base of a route's parameter model. `HEADERS`: the fields read from headers."""

    model_config = ConfigDict(extra="ignore", populate_by_name=False)
    HEADERS: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def wire_names(cls) -> list[tuple[str, str]]:
        """(where, name on the wire) of every field, in declaration order."""
        return [
            ("header" if name in cls.HEADERS else "query", field.alias or name)
            for name, field in cls.model_fields.items()
        ]


def _kind(annotation: Any, metadata: list[Any]) -> Any:
    """A fast check for one field: str -> the parsed value or _SLOW."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _kind(inner[0], metadata)
        return None
    if origin is typing.Annotated:
        return _kind(args[0], [*metadata, *args[1:]])
    if origin is Literal:
        choices = frozenset(str(a) for a in args)
        return lambda v: v if v in choices else _SLOW
    if metadata and any(
        not isinstance(m, annotated_types.Ge | annotated_types.Le) for m in metadata
    ):
        if annotation is str and all(_is_nul_check(m) for m in metadata):
            return lambda v: _SLOW if "\x00" in v else v
        return None
    if annotation is str:
        return lambda v: v
    if annotation is bool:
        return lambda v: True if v in _TRUE else False if v in _FALSE else _SLOW
    if annotation is int:
        low: Any = next((m.ge for m in metadata if isinstance(m, annotated_types.Ge)), None)
        high: Any = next((m.le for m in metadata if isinstance(m, annotated_types.Le)), None)

        def check(v: str) -> Any:
            if not (v.isascii() and v.isdigit() and len(v) <= 12):
                return _SLOW
            n = int(v)
            if (low is not None and n < low) or (high is not None and n > high):
                return _SLOW
            return n

        return check
    return None


def _is_nul_check(meta: Any) -> bool:
    """The no-NUL rule of app/artifacts/schemas.py (an AfterValidator) or its documentation."""
    func = getattr(meta, "func", None)
    if getattr(func, "__name__", "") == "no_nul":
        return True
    return isinstance(meta, FieldInfo) and not meta.metadata  # documentation only


_PLANS: dict[type[Params], list[tuple[str, str, bool, Any]]] = {}


def _plan(model: type[Params]) -> list[tuple[str, str, bool, Any]]:
    """(field, wire name, from a header?, fast check or None) per field, made once per model."""
    plan = _PLANS.get(model)
    if plan is None:
        plan = _PLANS[model] = [
            (
                name,
                field.alias or name,
                name in model.HEADERS,
                _kind(field.annotation, list(field.metadata)),
            )
            for name, field in model.model_fields.items()
        ]
    return plan


def query_items(request: ASGIConnection[Any, Any, Any, Any]) -> list[tuple[str, str]]:
    """The query string's pairs, decoded as the reference server decodes them."""
    raw = request.scope.get("query_string", b"")
    return parse_qsl(raw.decode("latin-1"), keep_blank_values=True) if raw else []


def _headers(request: Request, wanted: Iterable[str]) -> dict[str, str]:
    names = {n.encode("latin-1"): n for n in wanted}
    found: dict[str, str] = {}
    for key, value in request.scope["headers"]:
        name = names.get(key.lower())
        if name is not None and name not in found:
            found[name] = value.decode("latin-1")
    return found


def parse(request: Request, model: type[P], context: dict[str, Any] | None = None) -> P:
    """The route's parameters, or InvalidInput with every failing field's items. `context`:
    the validation context (limits from the settings) for fields that read one."""
    plan = _plan(model)
    query = dict(query_items(request))
    headers = _headers(request, [alias for _, alias, is_header, _ in plan if is_header])
    values: dict[str, Any] = {}
    fast = True
    for name, alias, is_header, check in plan:
        raw = (headers if is_header else query).get(alias)
        if raw is None:
            if model.model_fields[name].is_required():
                fast = False
                break
            continue
        value = _SLOW if check is None else check(raw)
        if value is _SLOW:
            fast = False
            break
        values[name] = value
    if fast:
        return model.model_construct(**values)  # type: ignore[return-value]
    return _validate(model, query, headers, context)


def _validate(
    model: type[P],
    query: dict[str, str],
    headers: dict[str, str],
    context: dict[str, Any] | None = None,
) -> P:
    data: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        alias = field.alias or name
        source = headers if name in model.HEADERS else query
        if alias in source:
            data[alias] = source[alias]
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        items = []
        for err in exc.errors(include_url=False):
            field_name = _field_of(model, err["loc"][0]) if err["loc"] else None
            where = "header" if field_name in model.HEADERS else "query"
            items.append({**err, "loc": [where, *err["loc"]]})
        raise InvalidInput(_query_first(items)) from None


def _field_of(model: type[Params], loc0: Any) -> str | None:
    for name, field in model.model_fields.items():
        if (field.alias or name) == loc0:
            return name
    return None


def _query_first(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Query errors before header errors, as the reference server validates them."""
    return [i for i in items if i["loc"][0] == "query"] + [
        i for i in items if i["loc"][0] == "header"
    ]


class NoParams(Params):
    """A route without query or header parameters."""
