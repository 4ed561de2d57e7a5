"""What the packaging and static-check tests share: the checkout's layout and bounded commands."""

from __future__ import annotations

import os
import subprocess
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def pyproject() -> dict[str, Any]:
    """The checkout's pyproject.toml, parsed."""
    with open(ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)


def package_dirs() -> dict[str, Path]:
    """Import name to folder, as setuptools maps them: ``{"runwire": ROOT / "sdk", ...}``."""
    mapping = pyproject()["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in mapping.items()}


def source_modules() -> dict[str, Path]:
    """Every module of the checkout by its dotted name (``runwire.engine._cli``), with its file.

    A module in a subfolder of a mapped folder is named through that subfolder, whether or not
    the subfolder has an ``__init__.py``.
    """
    modules: dict[str, Path] = {}
    for package, folder in package_dirs().items():
        for file in folder.rglob("*.py"):
            parts = file.relative_to(folder).with_suffix("").parts
            if "__pycache__" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = file
    return modules


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ``PYTHON*`` variable (no PYTHONPATH to the checkout,
    no PYTHONSAFEPATH hiding the working directory), plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    return {**env, "PYTHONDONTWRITEBYTECODE": "1", **extra}


def run(cmd: Sequence[str | os.PathLike[str]], *, cwd: Path, timeout: float = 60,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs ``cmd`` to its end or for ``timeout`` seconds at most (then it is killed and
    :class:`subprocess.TimeoutExpired` raised), capturing its output as text."""
    return subprocess.run([os.fspath(part) for part in cmd], cwd=cwd, timeout=timeout,
                          env=clean_env() if env is None else env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)


def shown(result: subprocess.CompletedProcess[str]) -> str:
    """A finished command with its exit code and output, for an assertion's message."""
    return (f"$ {' '.join(result.args)}\nexit code {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}")
