"""The committed OpenAPI document (openapi/openapi.json) is the contract: the app serves it as it
is, and its routes are held to it both ways. Every documented operation is served and every
served route is documented (the doc pages excepted), with the same scope, response statuses,
query and header parameters (the handler's `opt["params"]` model) and path parameters; every
secured route is also served under /api/v1, with the same methods and declarations. The web
UI's pages (`opt["ui"]`, app/ui/) are no part of the API: they live under /ui only and are
left out of the document."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from litestar import Litestar
from litestar.routes import HTTPRoute

from app.asgi import create_app
from app.params import Params
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "openapi" / "openapi.json"
API_PREFIX = "/api/v1"
UI_PREFIX = "/ui"
DOC_METHODS = ("get", "head", "post", "put", "patch", "delete", "options", "trace")
# Served, public and not in the document: the document itself and the pages that render it.
DOC_PAGES = {
    (method, path)
    for path in (
        "/schema/openapi.json",
        "/docs",
        "/redoc",
        "/docs/oauth2-redirect",
        "/docs/assets/{name}",
    )
    for method in ("GET", "HEAD")
}

Operation = tuple[str, str]  # (METHOD, path template as the document writes it)


def committed() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DOCUMENT.read_text())
    return doc


def template(path: str) -> str:
    """Litestar's `/artifacts/{artifact_id:str}` as the document writes it: `{artifact_id}`."""
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)


def _is_auto_options(handler: Any) -> bool:
    """The OPTIONS handler Litestar adds to every route that declares none."""
    return set(handler.http_methods) == {"OPTIONS"} and handler.handler_name == "options_handler"


def served(app: Litestar) -> tuple[dict[Operation, tuple[Any, HTTPRoute]], list[str]]:
    """Every (method, path) the app serves outside /api/v1, with its handler and route; and the
    problems found on the way (a non-HTTP route, a /api/v1 mirror that differs)."""
    problems: list[str] = []
    root: dict[Operation, tuple[Any, HTTPRoute]] = {}
    mirrored: dict[Operation, tuple[Any, HTTPRoute]] = {}
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            problems.append(f"not an HTTP route, so not in the contract: {route.path!r}")
            continue
        path = template(route.path)
        table = root
        if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
            path, table = path.removeprefix(API_PREFIX), mirrored
        for handler in route.route_handlers:
            if _is_auto_options(handler) or handler.opt.get("alias_of"):
                continue  # an alias serves a documented operation (its opt names which)
            if handler.opt.get("ui"):
                if not (route.path == UI_PREFIX or route.path.startswith(UI_PREFIX + "/")):
                    problems.append(f"{route.path}: a web UI page outside {UI_PREFIX}")
                continue  # the web UI: pages for people, not in the document
            for verb in sorted(handler.http_methods):
                if (verb, path) in table:
                    problems.append(f"{verb} {route.path}: served twice")
                table[(verb, path)] = (handler, route)

    def secured(table: dict[Operation, tuple[Any, HTTPRoute]]) -> dict[Operation, Any]:
        return {
            op: declared(handler)
            for op, (handler, _) in table.items()
            if handler.opt.get("scope") is not None
        }

    want, got = secured(root), secured(mirrored)
    for method, path in sorted(set(want) - set(got)):
        problems.append(f"{method} {path}: secured, but not served under {API_PREFIX}")
    for method, path in sorted(set(mirrored) - set(want)):
        problems.append(
            f"{method} {API_PREFIX}{path}: served under {API_PREFIX}, but no secured route "
            f"{method} {path} exists"
        )
    for op in sorted(set(want) & set(got)):
        if want[op] != got[op]:
            problems.append(
                f"{op[0]} {API_PREFIX}{op[1]} declares {show(got[op])}; "
                f"{op[0]} {op[1]} declares {show(want[op])}"
            )
    return root, problems


Declared = tuple[str | None, frozenset[int], frozenset[tuple[str, str]]]


def is_params(model: Any) -> bool:
    return isinstance(model, type) and issubclass(model, Params)


def declared(handler: Any) -> Declared:
    """(scope, statuses, query and header parameters) a handler declares in its `opt`; no
    `opt["params"]` (or None): no parameters."""
    opt = handler.opt
    model = opt.get("params")
    wire = frozenset(model.wire_names()) if is_params(model) else frozenset()
    return opt.get("scope"), frozenset(opt.get("statuses", ())), wire


def show(what: Declared) -> str:
    scope, statuses, wire = what
    return f"scope {scope!r}, statuses {sorted(statuses)}, parameters {sorted(wire)}"


def documented(doc: dict[str, Any]) -> dict[Operation, dict[str, Any]]:
    return {
        (method.upper(), path): {**op, "_path_parameters": item.get("parameters", [])}
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in DOC_METHODS
    }


def _resolve(doc: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    ref = obj.get("$ref")
    if ref is None:
        return obj
    target: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return _resolve(doc, target)


def doc_scope(op: dict[str, Any]) -> str | tuple[str, Any] | None:
    """The one scope an operation's `security` names ([{bearer: [s]}, {basic: [s]}]); None
    for a public operation; ("malformed", security) for anything else."""
    security = op.get("security")
    if not security:
        return None
    scopes = {s for req in security for listed in req.values() for s in listed}
    if len(scopes) == 1:
        (scope,) = scopes
        if security == [{"bearer": [scope]}, {"basic": [scope]}]:
            return scope
    return ("malformed", security)


def contract_problems(app: Litestar, doc: dict[str, Any]) -> list[str]:
    """Every difference between the app's routes and the document, one sentence each."""
    routes, problems = served(app)
    ops = documented(doc)
    for page in sorted(DOC_PAGES):
        if page not in routes:
            problems.append(f"{page[0]} {page[1]}: a doc page the app does not serve")
        elif routes[page][0].opt.get("scope") is not None:
            problems.append(f"{page[0]} {page[1]}: a doc page, but it declares a scope")
        if page in ops:
            problems.append(f"{page[0]} {page[1]}: a doc page, but the document lists it")
    app_ops = set(routes) - DOC_PAGES
    for method, path in sorted(app_ops - set(ops)):
        problems.append(f"{method} {path}: served, but not in the document")
    for method, path in sorted(set(ops) - app_ops - DOC_PAGES):
        problems.append(f"{method} {path}: in the document, but not served")
    for method, path in sorted(app_ops & set(ops)):
        name = f"{method} {path}"
        handler, route = routes[(method, path)]
        operation = ops[(method, path)]
        scope, statuses, wire = declared(handler)
        model = handler.opt.get("params")
        if model is not None and not is_params(model):
            problems.append(f"{name}: opt['params'] is {model!r}, not a Params subclass")
        if "statuses" not in handler.opt:
            problems.append(f"{name}: the handler declares no opt['statuses']")
        if doc_scope(operation) != scope:
            problems.append(f"{name}: scope {scope!r} served, {doc_scope(operation)!r} documented")
        responses = operation.get("responses", {})
        doc_statuses = {int(s) for s in responses if str(s).isdigit()}
        if set(responses) - {str(s) for s in doc_statuses}:
            problems.append(f"{name}: non-numeric responses documented: {sorted(responses)}")
        if doc_statuses != statuses:
            problems.append(
                f"{name}: statuses served but not documented {sorted(statuses - doc_statuses)}, "
                f"documented but not declared {sorted(doc_statuses - statuses)}"
            )
        listed = (*operation["_path_parameters"], *operation.get("parameters", []))
        params = [_resolve(doc, p) for p in listed]
        doc_path = {p["name"] for p in params if p["in"] == "path"}
        if doc_path != set(route.path_parameters):
            problems.append(
                f"{name}: path parameters {sorted(route.path_parameters)} served, "
                f"{sorted(doc_path)} documented"
            )
        doc_wire = {(p["in"], p["name"]) for p in params if p["in"] != "path"}
        if doc_wire != wire:
            problems.append(
                f"{name}: parameters served but not documented {sorted(wire - doc_wire)}, "
                f"documented but not served {sorted(doc_wire - wire)}"
            )
    return problems


def test_the_app_serves_exactly_the_committed_contract():
    app = create_app(Settings(data_dir=Path("/nonexistent")))
    problems = contract_problems(app, committed())
    assert not problems, "the app and openapi/openapi.json differ:\n  " + "\n  ".join(problems)


def test_served_schema_is_the_committed_one(server):
    with server.client() as client:
        served = client.get("/schema/openapi.json").json()
    assert served == json.loads((ROOT / "openapi" / "openapi.json").read_text())


def test_every_contract_route_is_documented():
    doc = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    paths = doc["paths"]
    assert set(paths["/artifacts"]) == {"get", "post"}
    assert set(paths["/artifacts/{artifact_id}"]) == {"get", "put", "delete"}
    assert set(paths["/artifacts/{artifact_id}/content"]) == {"get"}
    assert set(paths["/artifacts/{artifact_id}/upload"]) == {"post"}
    assert set(paths["/artifacts/{artifact_id}/download"]) == {"get", "head"}
    assert {"/healthz", "/readyz"} <= set(paths)
