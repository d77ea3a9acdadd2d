"""The dashboard's files, read once from the package: the page, the login form, its script and
style, and uPlot (vendored in `static/uplot`, see the README there).

Every answer carries a Content-Security-Policy that allows nothing but this origin: no inline
script or style, no other host (the page would work with no internet, and must).
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from importlib.resources import files
from string import Template

STATIC = files("berth_api.dashboard") / "static"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
        "object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str

    @property
    def etag(self) -> str:
        return f'"{hashlib.sha256(self.body).hexdigest()[:32]}"'


def _asset(path: str) -> Asset:
    resource = STATIC.joinpath(*path.split("/"))
    return Asset(resource.read_bytes(), _MEDIA_TYPES[path[path.rindex(".") :]])


# Served at /dashboard/static/{path}; nothing else is.
STATIC_FILES = {
    path: _asset(path)
    for path in (
        "dashboard.js",
        "dashboard.css",
        "favicon.svg",
        "uplot/uPlot.iife.min.js",
        "uplot/uPlot.min.css",
    )
}
PAGE = _asset("dashboard.html")
_LOGIN = Template(STATIC.joinpath("login.html").read_text(encoding="utf-8"))


def login_page(message: str = "") -> bytes:
    return _LOGIN.substitute(message=html.escape(message)).encode()
