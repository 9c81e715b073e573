"""What a request must pass before a handler sees it: the API key, and without one the
Host / Origin / content-type guard against other web pages driving the server; the body-size cap.

Without an API key, any web page the user visits could drive the server through the
browser. So, unless --allow-origin says otherwise, a server without a key answers only
requests whose Host is the address it is bound to (loopback names when bound to loopback:
no DNS rebinding), whose Origin, if any, is the page's own (the chat page at /), and whose
body is JSON (a cross-site form or text/plain post is refused).
"""

from __future__ import annotations

import ipaddress
import secrets
import socket

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from ..errors import MiniMindError
from .protocol import APIError, error_body

OPEN_PATHS = ("/health", "/", "/favicon.ico")  # with --api-key, these (and /static/) need no key


class RequireKey:
    """ASGI middleware: every path but /health and the web page needs `Authorization: Bearer KEY`.

    A plain ASGI class, not @app.middleware("http"): that wrapper buffers streamed responses
    through a task and hides the client's disconnect from the stream, so generation for a
    client that went away would run on."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] == "http" and path not in OPEN_PATHS and not path.startswith("/static/"):
            scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not secrets.compare_digest(given.strip(), self.key):
                response = JSONResponse(
                    error_body("missing or wrong API key (send Authorization: Bearer KEY)", code="invalid_api_key"),
                    status_code=401,
                )
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


class RequestGuard:
    """ASGI middleware for a server without an API key: refuse what a web page could send
    through the user's browser (403 or 415, OpenAI's error body).

    - Host must name the address the server is bound to: loopback names (localhost,
      127.0.0.1, [::1]) when bound to loopback, an IP address or this machine's name when
      bound to all addresses (0.0.0.0, ::). A DNS-rebinding page reaches the server under its
      own domain name, which is refused.
    - Origin, when a browser sends one, must be the server's own (the chat page at /) or one
      of `allow_origins` ("*" lifts both checks).
    - A request with a body must say it is JSON (application/json or application/*+json): a
      cross-site <form> or a fetch with text/plain needs no CORS preflight, JSON does.
    A plain ASGI class for the reason given at RequireKey."""

    def __init__(self, app, host: str, allow_origins: tuple[str, ...] = ()):
        self.app = app
        self.any_origin = "*" in allow_origins
        self.origins = set(allow_origins)
        self.hosts = {host_name(o.split("://", 1)[1]) for o in allow_origins if "://" in o}
        self.bound = host_name(host) or host

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            problem = self.problem(scope["method"], headers)
            if problem is not None:
                status, message, code = problem
                return await JSONResponse(error_body(message, code=code), status_code=status)(scope, receive, send)
        await self.app(scope, receive, send)

    def problem(self, method: str, headers: dict[bytes, bytes]) -> tuple[int, str, str] | None:
        host = headers.get(b"host", b"").decode("latin-1")
        origin = headers.get(b"origin", b"").decode("latin-1").lower().rstrip("/")
        if not self.any_origin:
            name = host_name(host)
            if host and not (name in self.hosts or host_allowed(name, self.bound)):
                return (
                    403,
                    f"Host {host!r} is not this server's address: without --api-key the server answers "
                    "only requests addressed to it (see minimind serve --allow-origin)",
                    "forbidden_host",
                )
            own = (f"http://{host}".lower(), f"https://{host}".lower())  # the page at / sends its own
            if origin and origin not in self.origins and origin not in own:
                return (
                    403,
                    f"requests from the web page at {origin!r} are not allowed: without --api-key only "
                    "the server's own page may call it (see minimind serve --allow-origin)",
                    "forbidden_origin",
                )
        if method in ("POST", "PUT", "PATCH"):
            media = headers.get(b"content-type", b"").decode("latin-1").split(";", 1)[0].strip().lower()
            if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
                return (
                    415,
                    f"the body must be sent as JSON (Content-Type: application/json), not "
                    f"{media or 'untyped'}; with curl, add -H 'Content-Type: application/json'",
                    "unsupported_media_type",
                )
        return None


def host_name(host: str | None) -> str | None:
    """The name in a Host header or URL authority, lowercased, without port or brackets:
    'LocalHost:8998' -> 'localhost', '[::1]:8998' -> '::1'; None when malformed."""
    if not host:
        return None
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or host[end + 1 :] and not (host[end + 1] == ":" and host[end + 2 :].isdigit()):
            return None
        return host[1:end]
    if host.count(":") > 1:  # an IPv6 address without brackets (a --host value)
        return host
    name, _, port = host.partition(":")
    if port and not port.isdigit():
        return None
    return name.rstrip(".") or None


def _ip(name: str):
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def host_allowed(name: str | None, bound: str) -> bool:
    """Whether a Host naming `name` addresses a server bound to `bound` (see RequestGuard)."""
    if name is None:
        return False
    ip, bound_ip = _ip(name), _ip(bound)
    if bound == "localhost" or bound_ip is not None and bound_ip.is_loopback:
        return name == "localhost" or ip is not None and ip.is_loopback
    if not bound or bound_ip is not None and bound_ip.is_unspecified:  # 0.0.0.0, :: or "": every address
        return ip is not None or name == "localhost" or name in _machine_names()
    return name == bound or ip is not None and ip == bound_ip


def _machine_names() -> set[str]:
    names = {socket.gethostname().lower()}
    try:
        names.add(socket.getfqdn().lower())
    except OSError:
        pass
    return names


def check_origin(origin: str) -> str:
    """A --allow-origin value, normalised ("*" or scheme://host[:port], no path); MiniMindError if not one."""
    if origin == "*":
        return origin
    o = origin.strip().lower().rstrip("/")
    scheme, sep, authority = o.partition("://")
    if not sep or scheme not in ("http", "https") or not authority or "/" in authority or host_name(authority) is None:
        raise MiniMindError(f"--allow-origin {origin!r}: expected an origin such as http://localhost:3000, or *")
    return o


class ClientGone(Exception):
    """The client hung up before its answer was ready: nothing to answer, nothing to log."""


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 when it is over `limit` bytes (checked on the declared length
    before reading, so a client that waits for `100 Continue` sends nothing)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large(limit)
    except ClientDisconnect:
        raise ClientGone() from None
    return bytes(body)


def too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"the request body is larger than this server's limit of {limit / 2**20:g} MiB (minimind serve --max-body-mb)",
        None,
        "request_too_large",
    )
