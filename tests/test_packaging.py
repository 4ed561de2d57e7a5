"""The wheel: one import name, runwire, that works once installed, away from the checkout.

The wheel is built once per session, offline, from a copy of what the build reads
(pyproject.toml, the readme, the license and the package folders). pip builds a local folder in
place, and setuptools' ``build/lib`` keeps the modules of earlier builds: a module moved or
deleted since would still ship, and two test runs at once would share one build folder.

It is installed into a fresh virtual environment, without dependencies. Those come from this
interpreter's site-packages, appended to the new environment's path by a ``.pth`` file; a path
entry runs no ``.pth`` file of its own, so the editable install of runwire found there stays
inert, and the tests check that runwire is imported from the new environment.
"""

from __future__ import annotations

import configparser
import csv
import io
import json
import shutil
import site
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from .packaging_helpers import ROOT, package_dirs, pyproject, run, shown, source_modules


def _copy_build_inputs(to: Path) -> None:
    project = pyproject()["project"]
    readme = project.get("readme")
    readme = readme.get("file") if isinstance(readme, dict) else readme
    files = ["pyproject.toml", *([readme] if readme else [])]
    files += [str(p.relative_to(ROOT)) for g in project.get("license-files", [])
              for p in ROOT.glob(g)]
    for name in files:
        (to / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, to / name)
    for folder in package_dirs().values():
        shutil.copytree(folder, to / folder.relative_to(ROOT),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    _copy_build_inputs(source)
    out = tmp_path_factory.mktemp("wheel")
    result = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--no-index", "--no-cache-dir", "-q", "-w", out, source],
                 cwd=source, timeout=120)
    assert result.returncode == 0, shown(result)
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="session")
def names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def _dist_info(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (path,) = [n for n in archive.namelist()
                   if n.count("/") == 1 and n.endswith(f".dist-info/{name}")]
        return archive.read(path).decode()


@pytest.fixture(scope="session")
def version(wheel: Path) -> str:
    metadata = _dist_info(wheel, "METADATA")
    (line,) = [line for line in metadata.splitlines() if line.startswith("Version: ")]
    return line.removeprefix("Version: ")


def test_wheel_installs_one_import_name(wheel: Path, names: set[str], version: str) -> None:
    assert {name.split("/")[0] for name in names} == {"runwire", f"runwire-{version}.dist-info"}
    recorded = {row[0] for row in csv.reader(io.StringIO(_dist_info(wheel, "RECORD"))) if row}
    assert recorded == names


def test_wheel_ships_marker_subpackages_and_license(names: set[str]) -> None:
    for name in ["runwire/py.typed", "runwire/engine/__init__.py",
                 "runwire/transport/__init__.py"]:
        assert name in names
    assert [n for n in names if n.split("/")[0].endswith(".dist-info") and n.endswith("/LICENSE")]


def test_wheel_ships_the_browser_files(names: set[str]) -> None:
    """The engine serves them at /v1/js/ and /dashboard (engine/door/_static.py)."""
    for name in ["js/dist/runwire.js", "js/dist/react.js", "js/dist/index.d.ts",
                 "js/dist/react.d.ts", "js/dashboard/index.html", "js/dashboard/dashboard.js",
                 "js/dashboard/dashboard.css"]:
        assert f"runwire/{name}" in names, name
    assert not [n for n in names if "node_modules" in n or n.endswith(".ts") and
                not n.endswith(".d.ts")]


def test_wheel_ships_every_module_of_the_checkout(names: set[str]) -> None:
    expected = {
        f"{module.replace('.', '/')}{'/__init__' if file.name == '__init__.py' else ''}.py": file
        for module, file in source_modules().items()}
    missing = sorted(str(file.relative_to(ROOT)) for name, file in expected.items()
                     if name not in names)
    assert not missing, (f"the wheel lacks {missing}: is their folder's package listed in "
                         f"[tool.setuptools] packages?")


def test_wheel_declares_the_console_script(wheel: Path) -> None:
    entry_points = configparser.ConfigParser()
    entry_points.read_string(_dist_info(wheel, "entry_points.txt"))
    assert dict(entry_points["console_scripts"]) == {"runwire": "runwire.engine._cli:main"}


def _our_site_dirs() -> list[str]:
    """The folders this interpreter finds its installed packages in."""
    dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"],
            sysconfig.get_paths()["platlib"]]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


class Venv:
    """A fresh virtual environment with the wheel installed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / ("Scripts" if sys.platform == "win32" else "bin")
        self.python = self.bin / "python"
        self.site = Path(run([self.python, "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             cwd=root).stdout.strip())


@pytest.fixture(scope="session")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    root = tmp_path_factory.mktemp("venv")
    result = run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root)
    assert result.returncode == 0, shown(result)
    env = Venv(root)
    # pip --python runs this pip inside the new interpreter, so scripts point at that one.
    result = run([sys.executable, "-m", "pip", "--python", env.python, "install", "--no-deps",
                  "--no-index", "--no-cache-dir", "-q", wheel], cwd=root, timeout=120)
    assert result.returncode == 0, shown(result)
    (env.site / "zz_runwire_test_dependencies.pth").write_text("\n".join(_our_site_dirs()) + "\n")
    return env


@pytest.fixture(scope="session")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's project folder whose own modules are named like the checkout's folders."""
    folder = tmp_path_factory.mktemp("project")
    (folder / "transport.py").write_text('ROLE = "a transport.py of the project\'s own"\n')
    (folder / "sdk.py").write_text('ROLE = "an sdk.py of the project\'s own"\n')
    (folder / "engine").mkdir()
    (folder / "engine" / "__init__.py").write_text('open_engine = "not runwire"\n')
    return folder


IMPORTS = """\
import json, sys
import runwire, runwire.engine, runwire.transport
from runwire import connect, streams, task
import engine, sdk, transport

print(json.dumps({
    "files": [runwire.__file__, runwire.engine.__file__, runwire.transport.__file__],
    "open_engine": [runwire.engine.open_engine.__module__, callable(runwire.engine.open_engine)],
    "facade": [callable(connect), callable(task), streams.__class__.__module__],
    "version": runwire.__version__,
    "the folder's own": [engine.open_engine, sdk.__file__, transport.__file__],
}))
"""


def test_installed_runwire_imports_from_the_venv_not_the_folder(
        venv: Venv, folder: Path, version: str) -> None:
    (folder / "check_imports.py").write_text(IMPORTS)
    result = run([venv.python, "check_imports.py"], cwd=folder, timeout=30)
    assert result.returncode == 0, shown(result)
    seen = json.loads(result.stdout)
    for file in seen["files"]:
        assert Path(file).is_relative_to(venv.site), seen  # not the checkout, not the folder
    assert seen["open_engine"][0].startswith("runwire.engine.") and seen["open_engine"][1]
    assert seen["facade"][:2] == [True, True] and seen["facade"][2].startswith("runwire.")
    assert seen["version"] == version
    own_engine, own_sdk, own_transport = seen["the folder's own"]
    assert own_engine == "not runwire"  # the folder was first on sys.path
    assert Path(own_sdk).parent == Path(own_transport).parent == folder


JOB = """\
import json, sys
import trio
from runwire.engine import open_engine
from runwire import connect, streams, task

words = streams.define(id="words", type=str)

@task(id="spell")
async def spell(payload: dict, ctx) -> dict:
    await words.pipe(iter(payload["words"])).wait_until_complete()
    return {"count": len(payload["words"])}

async def main(db: str) -> None:
    with trio.fail_after(20):
        async with open_engine([spell], store=f"sqlite:///{db}", api_key="secret-key",
                               port=0) as eng:
            assert eng.url is not None
            async with connect(eng.url, api_key="secret-key"):
                handle = await spell.trigger({"words": ["one", "two", "three", "four"]})
                chunks = [c async for c in await words.read(handle.id, timeout_in_seconds=10)]
    print(json.dumps(chunks))

trio.run(main, sys.argv[1])
"""


def test_installed_runwire_runs_a_job(venv: Venv, folder: Path, tmp_path: Path) -> None:
    (folder / "job.py").write_text(JOB)
    db = tmp_path / "x.db"
    result = run([venv.python, "job.py", db], cwd=folder, timeout=40)
    assert result.returncode == 0, shown(result)
    assert json.loads(result.stdout) == ["one", "two", "three", "four"]
    assert db.exists()


@pytest.mark.parametrize("command", [["{bin}/runwire", "--help"],
                                     ["{bin}/python", "-m", "runwire.engine", "--help"]],
                         ids=["script", "module"])
def test_installed_cli_helps(venv: Venv, folder: Path, command: list[str]) -> None:
    result = run([part.format(bin=venv.bin) for part in command], cwd=folder, timeout=30)
    assert result.returncode == 0, shown(result)
    assert "serve" in result.stdout


def test_the_fresh_venv_loads_no_editable_finder(venv: Venv) -> None:
    """The guard behind the tests above: loaded, the editable install's finder would find in the
    checkout any module that the wheel lacks."""
    result = run([venv.python, "-c", "import sys; "
                  "print([m for m in sys.modules if m.startswith('__editable__')])"],
                 cwd=venv.root, timeout=30)
    assert result.returncode == 0, shown(result)
    assert result.stdout.strip() == "[]"
