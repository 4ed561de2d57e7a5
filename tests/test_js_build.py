"""The browser package (sdk/js): the committed build is what its own build makes, its
package.json publishes what the engine serves, and the engine serves the files right."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from runwire.engine import EngineThread

JS = Path(__file__).resolve().parent.parent / "sdk" / "js"


def npm_ready() -> Path:
    """sdk/js/node_modules, installed from the lock file (npm ci) when missing."""
    if not (JS / "node_modules" / "esbuild").exists():
        npm = shutil.which("npm")
        assert npm, "npm is needed to build sdk/js (CI runs npm ci --prefix sdk/js)"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS, check=True,
                       timeout=600, stdout=subprocess.DEVNULL)
    return JS / "node_modules"


def test_the_committed_build_is_fresh(tmp_path: Path) -> None:
    npm_ready()
    node = shutil.which("node")
    assert node, "node is needed to build sdk/js"
    out = tmp_path / "dist"
    subprocess.run([node, str(JS / "build.mjs"), str(out)], check=True, timeout=300)
    built = {p.name: p.read_bytes() for p in out.iterdir()}
    committed = {p.name: p.read_bytes() for p in (JS / "dist").iterdir()}
    assert sorted(built) == sorted(committed)
    stale = [name for name in built if built[name] != committed[name]]
    assert not stale, f"sdk/js/dist is stale ({stale}): run `npm run build` in sdk/js and commit"


def test_the_package_publishes_what_the_engine_serves() -> None:
    package = json.loads((JS / "package.json").read_text())
    assert package["files"] == ["dist", "README.md"]
    assert (JS / "README.md").exists()
    assert package["exports"]["."]["import"] == "./dist/runwire.js"
    assert package["exports"]["./react"]["import"] == "./dist/react.js"
    assert "react" in package["peerDependencies"]  # react.js imports the bare "react"
    lock = json.loads((JS / "package-lock.json").read_text())
    for name, version in package["dependencies"].items():
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    react = (JS / "dist" / "react.js").read_text()
    assert 'from "react"' in react and 'from "./runwire.js"' in react
    assert "from \"" not in (JS / "dist" / "runwire.js").read_text().replace(
        'from "./', "")  # the client bundles its dependencies: a page needs nothing else


@pytest.fixture(scope="module")
def base() -> object:
    with EngineThread() as thread:
        yield thread.url.replace("ws://", "http://").removesuffix("/v1")


@pytest.mark.parametrize(("path", "local", "kind"), [
    ("/v1/js/runwire.js", "dist/runwire.js", "text/javascript"),
    ("/v1/js/react.js", "dist/react.js", "text/javascript"),
    ("/v1/js/index.d.ts", "dist/index.d.ts", "text/plain"),
    ("/dashboard", "dashboard/index.html", "text/html"),
    ("/dashboard/dashboard.js", "dashboard/dashboard.js", "text/javascript"),
])
def test_the_engine_serves_the_files(base: str, path: str, local: str, kind: str) -> None:
    with httpx.Client(base_url=base) as http:
        answer = http.get(path)  # no credential: a page loads them before it logs in
        assert answer.status_code == 200
        assert answer.content == (JS / local).read_bytes()
        assert answer.headers["content-type"].startswith(kind)
        assert answer.headers["access-control-allow-origin"] == "*"
        etag = answer.headers["etag"]
        again = http.get(path, headers={"If-None-Match": etag})
        assert again.status_code == 304 and not again.content
        if kind == "text/html":
            assert "default-src 'self'" in answer.headers["content-security-policy"]


def test_bad_requests_for_files(base: str) -> None:
    with httpx.Client(base_url=base) as http:
        missing = http.get("/v1/js/nope.js")
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"
        assert "/v1/js/runwire.js" in missing.json()["message"]
        assert http.get("/dashboard/../v1/js/runwire.js").status_code in (200, 404)
        assert http.get("/dashboard/%2e%2e/secret").status_code == 404
        posted = http.post("/v1/js/runwire.js", content=b"x")
        assert posted.status_code == 405 and posted.headers["allow"] == "GET, HEAD"
        head = http.head("/v1/js/react.js")
        assert head.status_code == 200 and not head.content
        assert int(head.headers["content-length"]) == len((JS / "dist/react.js").read_bytes())


def test_npm_pack_publishes_the_build_and_types_only() -> None:
    npm = shutil.which("npm")
    assert npm, "npm is needed"
    done = subprocess.run([npm, "pack", "--dry-run", "--json"], cwd=JS, capture_output=True,
                          text=True, timeout=120, check=True)
    files = sorted(f["path"] for f in json.loads(done.stdout)[0]["files"])
    assert files == ["README.md", "dist/index.d.ts", "dist/react.d.ts", "dist/react.js",
                     "dist/runwire.js", "package.json"]
