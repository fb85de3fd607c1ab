"""URLs the server writes into answers (Location, Link, download_url, redirects), built from
the request's scope exactly as the contract's reference server (Starlette) builds them: the
Host header when it is a valid authority, else the server address; the decoded path."""

from __future__ import annotations

import re
from ipaddress import AddressValueError, IPv6Address
from typing import Any
from urllib.parse import SplitResult, parse_qsl, quote, urlencode, urlsplit

_HOST = re.compile(
    r"^(?P<host>[a-z0-9._~%!$&'()*+,;=-]+|\[(?:(?P<ipv6>[a-f0-9]*:[a-f0-9.:]+)|"
    r"(?-i:v)[a-f0-9]+\.[a-z0-9._~!$&'()*+,;=:-]+)\])(?::(?P<port>[0-9]+))?$",
    re.IGNORECASE,
)
_DEFAULT_PORT = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _authority(host_header: str | None) -> str | None:
    """The Host header as an authority, or None when it is not a valid one."""
    if host_header is None:
        return None
    match = _HOST.fullmatch(host_header)
    if match is None:
        return None
    if match["ipv6"] is not None:
        try:
            IPv6Address(match["ipv6"])
        except AddressValueError:
            return None
    port = match["port"]
    if port is not None:
        digits = port.lstrip("0")
        if len(digits) > 5 or int(digits or "0") > 65535:
            return None
        return f"{match['host']}:{port}"
    return str(match["host"])


def _host_header(scope: dict[str, Any]) -> str | None:
    for key, value in scope["headers"]:
        if key == b"host":
            return str(value.decode("latin-1"))
    return None


def escaped_path(path: str) -> str:
    """A decoded path as it stands in a URL the reference builds (`?`, `#`, `\\` escaped)."""
    return path.replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")


def url_of(scope: dict[str, Any], path: str | None = None, query: str | None = None) -> str:
    """The request's URL (or the same origin with another path or query)."""
    scheme = scope.get("scheme", "http")
    if path is None:
        path = scope["path"]
    path = escaped_path(path)
    if query is None:
        query = scope.get("query_string", b"").decode()
    netloc = _authority(_host_header(scope))
    server = scope.get("server")
    if netloc is None and server is not None:
        host, port = server
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        netloc = host if port == _DEFAULT_PORT.get(scheme) else f"{host}:{port}"
    if netloc is not None:
        return SplitResult(scheme, netloc, path, query, "").geturl()
    if path.startswith("//"):
        path = "/%2F" + path[2:]
    return f"{path}?{query}" if query else path


def base_url(scope: dict[str, Any]) -> str:
    """The server's root URL as this client reached it, ending in `/`."""
    root = scope.get("app_root_path", scope.get("root_path", ""))
    return url_of(scope, root if root.endswith("/") else root + "/", "")


def with_query_param(scope: dict[str, Any], name: str, value: str) -> str:
    """This request's URL with `name=value` set (moved last; other parameters kept in order)."""
    url = url_of(scope)
    parts = urlsplit(url)
    params = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != name]
    params.append((name, value))
    return parts._replace(query=urlencode(params)).geturl()


def redirect_location(url: str) -> str:
    return quote(url, safe=":/%#?=@[]!$&'()*+,;")
