"""Static checks over the real runwire package: import-linter's contracts and mypy --strict.

Neither grimp (under import-linter) nor mypy follows setuptools' editable-install hook, the
finder that maps runwire to sdk/, runwire.engine to engine/ and runwire.transport to
transport/: through it they would see sdk/ alone. So the package is laid out once per session
as a folder of symlinks into the working tree (runwire/* -> sdk/*, runwire/engine -> engine/,
runwire/transport -> transport/) and both tools run from that folder, with it on PYTHONPATH, so
that they find runwire there before the editable install. Their caches live there too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from .packaging_helpers import (ROOT, clean_env, package_dirs, pyproject, run, shown,
                                source_modules)

README_TYPES = ROOT / "tests" / "typing" / "readme_types.py"


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``runwire/``, the package as installed, made of symlinks."""
    tree = tmp_path_factory.mktemp("tree")
    dirs = sorted(package_dirs().items(), key=lambda item: item[0].count("."))
    (top, top_folder), *subpackages = dirs
    assert "." not in top and all(name.startswith(f"{top}.") for name, _ in subpackages)
    (tree / top).mkdir()
    for entry in top_folder.iterdir():
        if entry.name != "__pycache__":
            (tree / top / entry.name).symlink_to(entry)
    for name, folder in subpackages:
        link = tree.joinpath(*name.split("."))
        assert not link.exists() and not link.parent.is_symlink(), link
        link.symlink_to(folder, target_is_directory=True)
    return tree


def _env(tree: Path) -> dict[str, str]:
    return clean_env(PYTHONPATH=str(tree))


GRAPH = """\
import json, grimp
graph = grimp.build_graph("runwire", cache_dir=None)
print(json.dumps(sorted(graph.modules)))
"""


def test_import_linter_sees_the_whole_package(tree: Path) -> None:
    """The harness itself: grimp builds its graph from the symlinked tree, engine and transport
    included (through the editable install it would see sdk/ alone)."""
    result = run([sys.executable, "-c", GRAPH], cwd=tree, env=_env(tree))
    assert result.returncode == 0, shown(result)
    seen = set(json.loads(result.stdout))
    assert {"runwire", "runwire.engine", "runwire.transport"} <= seen, seen
    assert any(module.startswith("runwire.engine._") for module in seen), seen


# Runtime imports only: names used in annotations alone (TYPE_CHECKING) cannot form a cycle.
CYCLES = """\
import json, grimp
graph = grimp.build_graph("runwire", exclude_type_checking_imports=True, cache_dir=None)
engine = sorted(m for m in graph.modules if m.startswith("runwire.engine"))
found = []
for module in engine:
    for imported in graph.find_modules_directly_imported_by(module):
        if imported.startswith("runwire.engine") and imported != module:
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain:
                found.append([module, *chain])
print(json.dumps({"modules": len(engine), "cycles": found}))
"""


def test_the_engine_has_no_import_cycle(tree: Path) -> None:
    """No engine module imports, at run time, a module that imports it back (the layers
    contract checks between layers; this checks inside them too)."""
    result = run([sys.executable, "-c", CYCLES], cwd=tree, env=_env(tree))
    assert result.returncode == 0, shown(result)
    report = json.loads(result.stdout)
    assert report["modules"] > 20, report
    assert report["cycles"] == [], report["cycles"]


# lint-imports as installed for this interpreter, wherever its scripts folder is.
LINT_IMPORTS = """\
import sys
from importlib.metadata import entry_points
(command,) = entry_points(group="console_scripts", name="lint-imports")
sys.argv[0] = "lint-imports"
sys.exit(command.load()())
"""


def _contracts() -> list[str]:
    return [contract["id"] for contract in pyproject()["tool"]["importlinter"]["contracts"]]


@pytest.mark.parametrize("contract", _contracts())
def test_import_layers(tree: Path, contract: str) -> None:
    """Each contract is checked on its own: a layer that does not exist stops lint-imports
    before it reports on any other contract."""
    result = run([sys.executable, "-c", LINT_IMPORTS, "--no-logo",
                  "--cache-dir", tree / ".import_linter_cache", "--contract", contract,
                  ROOT / "pyproject.toml"],
                 cwd=tree, env=_env(tree), timeout=120)
    assert result.returncode == 0, shown(result)


def test_mypy_strict(tree: Path) -> None:
    """The package, and the README's example as a typed file when there is one. mypy takes
    either ``-p runwire`` or files, so the package is given as its folder in the tree."""
    files = [README_TYPES] if README_TYPES.exists() else []
    report = tree / "mypy-linecount"
    result = run([sys.executable, "-m", "mypy", "--strict", "--config-file",
                  ROOT / "pyproject.toml", "--cache-dir", tree / ".mypy_cache",
                  "--linecount-report", report, "runwire", *files],
                 cwd=tree, env=_env(tree), timeout=300)
    # The harness itself: mypy read every module of the checkout from the tree. (A blocking
    # error, such as a syntax error, stops mypy before it writes the report.)
    counts = report / "linecount.txt"
    checked = {line.split()[-1] for line in counts.read_text().splitlines()} \
        if counts.exists() else set()
    if checked:
        missing = sorted(set(source_modules()) - checked)
        assert not missing, f"mypy did not check {missing}\n{shown(result)}"
    assert result.returncode == 0, shown(result)
    assert checked, f"mypy wrote no report of the modules it checked\n{shown(result)}"
