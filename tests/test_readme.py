"""The README's example runs exactly as written and prints what it says it prints."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_readme_example_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## In 20 lines\s+```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 22
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env={"PYTHONPATH": str(ROOT),
                                                        "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["HELLO", "STREAMING", "WORLD"]
    assert (tmp_path / "runwire.db").exists()


def test_readme_names_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    assert blocks[0] == "python -m pip install . && python -m examples.quickstart"
    assert blocks[1] == 'python -m pip install -e ".[dev]" && python -m pytest'
    assert blocks[1] in ci


def _serve_and_stop(command: str, cwd: Path, env: dict[str, str]) -> str:
    """Run a README ``runwire serve`` line (on a free port), wait for its URL, stop it."""
    import shlex
    import signal

    argv = [sys.executable, "-m", "runwire.engine", *shlex.split(command)[1:]]
    argv[argv.index("--port") + 1] = "0"  # the README's 8765 may be taken here
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        while line and "serving ws://" not in line:
            line = proc.stdout.readline()
        assert "serving ws://" in line, proc.stdout.read()
        return line
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_readme_serve_commands_work_in_and_outside_the_checkout(tmp_path):
    import os

    readme = (ROOT / "README.md").read_text()
    command = re.search(r"```sh\n(runwire serve [^\n]*)\n```", readme).group(1)
    assert "--api-key dev-secret-key" in command
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RUNWIRE_API_KEY", None)
    line = _serve_and_stop(command.replace("sqlite:///runwire.db",
                                           f"sqlite:///{tmp_path / 'in.db'}"), ROOT, env)
    assert "tasks: generate" in line
    outside = re.search(r"`(runwire serve --tasks path/to/runwire/examples/quickstart\.py[^`]*)`",
                        readme).group(1)
    outside = outside.replace("path/to/runwire", str(ROOT)) + " --port 8765 --store memory://"
    assert "tasks: generate" in _serve_and_stop(outside, tmp_path, env)
