"""`tokenlab serve`: textual-serve's server behind a secret token, Host and Origin checks, and a cap on labs."""

from __future__ import annotations

import asyncio
import errno
import html
import ipaddress
import re
import secrets
import signal
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web
from textual_serve.server import Server
from tokenlab.errors import TokenlabError

WILDCARD_HOSTS = ("0.0.0.0", "::", "")
"""Addresses that listen on every interface: the Host header cannot be checked against a known name."""

_HOST_HEADER = re.compile(r"^[A-Za-z0-9.\-]+(:\d+)?$|^\[[0-9A-Fa-f:.]+\](:\d+)?$")
"""What a Host header may look like (a name or an IP literal, an optional port); nothing else reaches a page."""


class AddressError(TokenlabError):
    """The address to listen on cannot be used (unknown host, port in use, not this machine's address)."""


def url_host(host: str) -> str:
    """A host as it appears in a URL (IPv6 literals in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (localhost or a loopback address)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, port: int) -> frozenset[str] | None:
    """The Host header values a browser sends for this server (None: any, when listening on every interface).

    Checking the Host header stops DNS rebinding: a page on attacker.example whose name later resolves to
    127.0.0.1 still sends `Host: attacker.example`.
    """
    if host in WILDCARD_HOSTS:
        return None
    names = {url_host(host).lower()}
    if is_loopback(host):
        names |= {"localhost", "127.0.0.1", "[::1]"}
    allowed = {f"{name}:{port}" for name in names}
    if port == 80:
        allowed |= names
    return frozenset(allowed)


def check_address(host: str, port: int) -> None:
    """Fail fast, before the model loads, when `host` is unknown or `port` is taken there (AddressError)."""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise AddressError(f"--host {host}: no such address; use localhost, 127.0.0.1, or 0.0.0.0 for every "
                           "interface") from None
    unavailable: OSError | None = None
    bound = 0
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
            try:
                probe.bind(address)
                bound += 1
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise AddressError(describe_bind_error(exc, host, port)) from None
                unavailable = exc  # e.g. ::1 on a machine without IPv6: asyncio skips it too
    if not bound and unavailable is not None:
        raise AddressError(describe_bind_error(unavailable, host, port))


def describe_bind_error(exc: OSError, host: str, port: int) -> str:
    """One line for a failure to listen on host:port."""
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is already in use on {host}; stop what uses it or give another --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"--host {host} is not an address of this machine; use localhost, 127.0.0.1 or 0.0.0.0"
    if exc.errno == errno.EACCES:
        return f"not allowed to listen on port {port} (ports below 1024 need root); give another --port"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def _page(status: int, title: str, message: str) -> web.Response:
    """A small HTML page that says why a request was refused."""
    body = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>tokenlab · {html.escape(title)}"
            f"</title></head>\n<body style=\"font-family: monospace; background: #111; color: #ddd; margin: 3em\">"
            f"<h1>tokenlab serve · {html.escape(title)}</h1><p>{html.escape(message)}</p></body></html>\n")
    return web.Response(status=status, text=body, content_type="text/html")


class LabServer(Server):
    """textual-serve's Server, with each request checked and the number of live labs capped."""

    def __init__(self, command: str, *, host: str, port: int, token: str | None, max_labs: int,
                 announce: Callable[[], None]) -> None:
        super().__init__(command, host=host, port=port, title="tokenlab")
        self.token = token
        """The secret every page and websocket must present; None when serving without one (--no-token)."""
        self.max_labs = max_labs
        self.labs = 0
        """Lab processes running now (one per open websocket)."""
        self.cookie_name = f"tokenlab-serve-{port}"  # cookies do not tell ports apart; the name does
        self.allowed_hosts = allowed_hosts(host, port)
        self._announce = announce

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(self._guard)
        return app

    async def on_startup(self, app: web.Application) -> None:
        """Print nothing here: `serve` announces the URL once the port is bound."""

    def refusal(self, request: web.Request) -> str | None:
        """Why a request may not reach the lab, or None when it may."""
        host = request.headers.get("Host", "")
        if not _HOST_HEADER.match(host):
            return "the request's Host header is missing or malformed"
        if self.allowed_hosts is not None and host.lower() not in self.allowed_hosts:
            return (f"this server answers to {', '.join(sorted(self.allowed_hosts))} only, not {host} "
                    "(a page of another site, or DNS rebinding)")
        origin = request.headers.get("Origin")
        # browsers send Origin with every websocket and cross-site request: only pages of this server may drive a lab
        if origin is not None and origin.lower() not in (f"http://{host.lower()}", f"https://{host.lower()}"):
            return f"requests from pages of {origin} are refused; open the lab's own URL"
        if self.token is None or request.path.startswith("/static/"):
            return None
        offered = request.query.get("token") or request.cookies.get(self.cookie_name) or ""
        if not secrets.compare_digest(offered.encode(), self.token.encode()):
            return ("this server needs the token it printed when it started: open the URL shown in its terminal "
                    "(…/?token=…)")
        return None

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        problem = self.refusal(request)
        if problem is not None:
            return _page(403, "forbidden", problem)
        if request.path != "/":
            return await handler(request)
        if self.labs >= self.max_labs:
            return self.full_page()
        # the page's websocket URL is built from public_url: make it the address this browser used, so a
        # lab served on 0.0.0.0 works from another machine (handle_index reads it before it awaits anything)
        self.public_url = f"{request.scheme}://{request.headers['Host']}"
        response = await handler(request)
        if self.token is not None and request.query.get("token"):
            # the websocket the page opens carries no query of ours: a same-site cookie brings the token along
            response.set_cookie(self.cookie_name, self.token, httponly=True, samesite="Strict", path="/")
        return response

    def full_page(self) -> web.Response:
        """The page shown when every lab is taken."""
        return _page(503, "all labs are in use",
                     f"All {self.max_labs} labs of this server are in use (one per browser tab). Close a tab "
                     "with a lab, then reload this page; or restart tokenlab serve with a higher --max-labs.")

    async def handle_websocket(self, request: web.Request) -> web.StreamResponse:
        """Start a lab for this websocket, unless the cap on concurrent labs is reached."""
        if self.labs >= self.max_labs:
            return self.full_page()
        self.labs += 1  # no await between the check and the count: two sockets cannot both take the last lab
        try:
            return await super().handle_websocket(request)
        finally:
            self.labs -= 1

    def serve(self, debug: bool = False) -> None:
        """Listen until Ctrl-C or SIGTERM; a failure to bind raises AddressError."""
        self.debug = debug
        self.initialize_logging()
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.add_signal_handler(signal.SIGINT, self.request_exit)
        loop.add_signal_handler(signal.SIGTERM, self.request_exit)
        try:
            web.run_app(self._make_app(), host=self.host or None, port=self.port, handle_signals=False, loop=loop,
                        print=lambda *_: self._announce())
        except OSError as exc:
            raise AddressError(describe_bind_error(exc, self.host, self.port)) from None
