"""The browser's files: the built ES modules at ``/v1/js/`` and the dashboard at ``/dashboard``.

The files ship inside the ``runwire`` package (``sdk/js/dist`` and ``sdk/js/dashboard``,
package data of the wheel); ``sdk/js/build.mjs`` makes ``dist`` and tests/test_js_build.py
checks the committed copy is what it makes. They are public (no credential: a page must load
them before it can log in) and read once per process. Each answer carries an ``ETag`` and
``Cache-Control: no-cache`` (a browser revalidates, and gets 304 while the engine's version
stands), and the dashboard a ``Content-Security-Policy`` that lets it load only its own files
and talk only to its own engine.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from ._http import Exchange, HttpError

_TYPES = {
    "js": "text/javascript; charset=utf-8",
    "ts": "text/plain; charset=utf-8",  # the .d.ts files
    "html": "text/html; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "png": "image/png",
    "svg": "image/svg+xml",
}
#: URL path -> file inside the runwire package.
FILES = {
    "/v1/js/runwire.js": "js/dist/runwire.js",
    "/v1/js/react.js": "js/dist/react.js",
    "/v1/js/index.d.ts": "js/dist/index.d.ts",
    "/v1/js/react.d.ts": "js/dist/react.d.ts",
    "/dashboard": "js/dashboard/index.html",
    "/dashboard/": "js/dashboard/index.html",
    "/dashboard/dashboard.js": "js/dashboard/dashboard.js",
    "/dashboard/dashboard.css": "js/dashboard/dashboard.css",
}
_DASHBOARD_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                  "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
_cache: dict[str, tuple[bytes, str]] = {}


def is_static(path: str) -> bool:
    return path.startswith("/v1/js/") or path == "/dashboard" or path.startswith("/dashboard/")


def _load(name: str) -> tuple[bytes, str]:
    found = _cache.get(name)
    if found is None:
        body = resources.files("runwire").joinpath(name).read_bytes()
        etag = '"' + hashlib.blake2s(body, digest_size=12).hexdigest() + '"'
        found = _cache[name] = (body, etag)
    return found


async def serve_static(exchange: Exchange) -> None:
    request = exchange.request
    name = FILES.get(request.path)
    if name is None:
        raise HttpError(404, "not_found", f"no file {request.raw_path[:200]!r}; the browser's "
                                          f"files are {', '.join(sorted(FILES))}")
    if request.method not in ("GET", "HEAD"):
        raise HttpError(405, "method_not_allowed", "files are read with GET",
                        [("allow", "GET, HEAD")])
    try:
        body, etag = _load(name)
    except OSError:
        raise HttpError(404, "not_found", f"{name} is missing from this installation: "
                                          f"build it with `npm run build` in sdk/js") from None
    headers = [("content-type", _TYPES[name.rsplit(".", 1)[-1]]), ("etag", etag),
               ("cache-control", "no-cache")]
    if name.endswith(".html"):
        headers += [("content-security-policy", _DASHBOARD_CSP),
                    ("referrer-policy", "no-referrer"), ("x-frame-options", "DENY")]
    if request.header("if-none-match") == etag:
        await exchange.respond(304, headers)
        return
    await exchange.respond(200, headers, body)
