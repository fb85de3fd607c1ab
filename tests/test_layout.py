"""storage/ is the core and knows nothing of HTTP: no module of it imports app, fastapi,
starlette, litestar or python_multipart (walked from the source, so no import can sneak in)."""

import ast
from pathlib import Path

STORAGE = Path(__file__).resolve().parent.parent / "storage"
FORBIDDEN = {"app", "fastapi", "starlette", "litestar", "python_multipart", "multipart", "uvicorn"}


def imported_roots(source: str) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_storage_never_imports_http_or_app():
    offenders = {
        str(path.relative_to(STORAGE)): sorted(imported_roots(path.read_text()) & FORBIDDEN)
        for path in STORAGE.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    assert len(offenders) >= 8  # the walk really saw the package


def test_the_walker_catches_an_http_import():
    assert imported_roots("from fastapi import Request\nimport app.cli\n") == {"fastapi", "app"}


CLIENT = Path(__file__).resolve().parent.parent / "client" / "workflow_artifacts_client"
# anyio: a dependency of httpx, imported by the async client; rich: the optional `cli` extra
CLIENT_MAY_IMPORT = {"httpx", "anyio", "rich", "workflow_artifacts_client"}


def test_the_client_imports_only_the_stdlib_httpx_anyio_and_rich():
    """The client is installed where the server is not: it never imports app, storage or any
    server dependency (tests/system/test_client_install.py installs it alone)."""
    import sys

    offenders = {
        str(path.relative_to(CLIENT)): sorted(
            imported_roots(path.read_text()) - set(sys.stdlib_module_names) - CLIENT_MAY_IMPORT
        )
        for path in CLIENT.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    assert len(offenders) >= 8
