"""Every example in ``examples/`` runs with one command and prints what it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.py") if p.stem != "__init__")

#: What each example must print (regular expressions, searched in stdout, in this order).
EXPECTED = {
    "quickstart": [
        r"engine at ws://127\.0\.0\.1:\d+/v1, store sqlite:///",
        r"Structured concurrency means every task has a parent",
        r"run run_\w+ COMPLETED: \{'words': 22, 'attempt': 1\}",
    ],
    "cancellable_stream": [
        r"engine at ws://127\.0\.0\.1:\d+/v1",
        r"reader: the stream ended after \d+ of \d+ tokens",
        r"run COMPLETED: stopped=True reason='user pressed stop' tokens=\d+",
    ],
    "fastapi_app": [
        r"app at http://127\.0\.0\.1:\d+",
        r"triggered run_\w+ \(token \S+\.\.\.\)",
        r"stream ended after \d+ words",
        r"run \{'status': 'COMPLETED', 'output': \{'tokens': \d+, 'stopped': True\}, 'attempt': 1\}",
    ],
    "approval_gate": [
        r"run run_\w+ is WAITING",
        r"draft: We are happy to announce runwire 0\.1!",
        r"sent approval from alice",
        r"progress: drafting -> waiting for approval -> publishing",
        r"run COMPLETED: \{'published': True, 'text': 'We are thrilled to announce "
        r"runwire 0\.1!', 'approved_by': 'alice'\}",
    ],
    "tool_calling": [
        r'tool \(OpenAI\): \{"type": "function", "function": \{"name": "get_weather"',
        r'tool \(Anthropic\): \{"name": "get_weather", .*"input_schema"',
        r'tool call: get_weather\(\{"city": "Paris"\}\)',
        r'tool result: \{"city": "Paris", "temperature": 18, "unit": "celsius"\}',
        r"run COMPLETED: It is 18 degrees celsius in Paris\.",
    ],
}


def test_every_example_has_expectations():
    assert set(EXPECTED) == set(EXAMPLES), "an example has no expectations, or one is missing"
    assert {"cancellable_stream", "approval_gate", "quickstart"} <= set(EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_runs(example, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", f"examples.{example}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    position = 0
    for pattern in EXPECTED[example]:
        match = re.compile(pattern).search(proc.stdout, position)
        assert match, f"{pattern!r} not in the output (after {position}):\n{proc.stdout}"
        position = match.end()
    assert not list(tmp_path.iterdir()), "the example left files behind"
    if example == "cancellable_stream":  # stopped after the 10th token, long before the end
        received, total = map(int, re.search(r"after (\d+) of (\d+)", proc.stdout).groups())
        stored = int(re.search(r"tokens=(\d+)", proc.stdout).group(1))
        assert 10 <= received == stored < total / 2


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_help_prints_help_and_creates_nothing(example, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", f"examples.{example}", "--help"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m examples.") and "--help" in proc.stdout
    assert not list(tmp_path.iterdir()), "--help created files"
    bad = subprocess.run([sys.executable, "-m", f"examples.{example}", "--no-such-flag"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unrecognized arguments" in bad.stderr


def test_the_quickstart_keeps_a_db_only_when_asked(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "examples.quickstart", "--db", "kept.db"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "kept.db").exists()
