"""What stands between the network and the app: a size limit on request bodies, and a guard that answers
only requests meant for this server from its own page, with the headers that keep a browser strict.

Both are plain ASGI middleware (a class around the app), so each reads top to bottom without a framework.
"""

import ipaddress
import socket
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse

FORM_OVERHEAD = 64 * 1024  # bytes a request may carry beyond the image: the form fields and multipart framing
LOOPBACK = ("127.0.0.1", "localhost", "::1")  # this machine's names: always answered
EVERY_ADDRESS = ("0.0.0.0", "::", "")  # listening on these, the server is reached at any of the machine's addresses

SECURITY_HEADERS = [
    # only this server's own files run, load or connect; nothing inline, nothing from elsewhere
    ("content-security-policy", "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; "
                                "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    ("x-content-type-options", "nosniff"),  # a file is only what its Content-Type says
    ("x-frame-options", "DENY"),  # no other site can frame the page (older browsers' frame-ancestors)
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
]


async def refuse(send, status, detail):
    await JSONResponse({"detail": detail}, status_code=status, headers=dict(SECURITY_HEADERS))(
        {"type": "http"}, None, send)


class BodyTooLarge(Exception):
    """Raised inside the app's receive() once a body passes the limit; see UploadLimit."""


class UploadLimit:
    """A request body over `max_bytes` gets 413, whether it says its length up front (Content-Length) or
    streams it in chunks (Transfer-Encoding: chunked): the count stops at the limit, the rest is not read."""

    def __init__(self, app, max_bytes):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_bytes:
            return await refuse(send, 413, self.message())
        received, started = 0, False

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge(self.message())
            return message

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            if not started:
                await refuse(send, 413, self.message())

    def message(self):
        return f"the upload is larger than the {(self.max_bytes - FORM_OVERHEAD) / 1e6:g} MB this server accepts"


class Guard:
    """Answers a request only when it is for this server and, if it changes anything, from this server's page.

    The Host header must name this server, whatever address it listens on (`host`): this machine's names
    (LOOPBACK), the listening address itself and the names in `also` (serve.py --allow-host). That refuses DNS
    rebinding: another site's name pointed at this machine to read the API. Listening on every address
    (0.0.0.0), an address written in numbers is answered too, as is the machine's own name: a browser sends a
    number only to the address it names, which no other site can rebind. Any POST whose Origin is another site
    is refused (403) before it costs anything: a web page the user visits can send a form to 127.0.0.1, since
    multipart forms need no CORS preflight. No CORS header is ever sent, so no other site can read an answer
    either. Every response carries SECURITY_HEADERS.
    """

    def __init__(self, app, host="127.0.0.1", also=()):
        self.app = app
        self.any_address = host in EVERY_ADDRESS
        names = LOOPBACK + (host,) + tuple(also) + ((socket.gethostname(),) if self.any_address else ())
        self.names = {name.lower().strip("[]") for name in names if name not in EVERY_ADDRESS}

    def allowed(self, name):
        """Whether a request whose Host names `name` is for this server."""
        if name in self.names:
            return True
        if not self.any_address:
            return False
        try:
            ipaddress.ip_address(name)  # an address in numbers, not a name
            return True
        except ValueError:
            return False

    def refusal(self, host):
        names = ", ".join(sorted(self.names))[:120] + (" or an address in numbers" if self.any_address else "")
        return (f"this server answers only to {names}, not to the host name {host[:60]!r} "
                "(serve.py --allow-host adds one)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        name = (urlsplit(f"//{host}").hostname or "") if host else ""
        if not self.allowed(name):
            return await refuse(send, 421 if host else 400, self.refusal(host))
        origin = headers.get("origin")
        if scope["method"] not in ("GET", "HEAD") and origin is not None and urlsplit(origin).netloc != host:
            return await refuse(send, 403, f"requests from another site ({origin[:60]}) are refused; "
                                           "use this server's own page or a script without an Origin header")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k.encode(), v.encode()) for k, v in SECURITY_HEADERS if k.encode() not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)
