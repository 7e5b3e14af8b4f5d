"""Every benchmark in bench/ runs in its smoke mode (tiny inputs, seconds), so that a broken
benchmark fails here rather than when someone next wants its figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
# The scripts; the other modules there (graphs.py, rivals.py, common.py) are their libraries.
SCRIPTS = sorted(
    p.name for p in BENCH.glob("*.py") if 'if __name__ == "__main__":' in p.read_text()
)


def test_the_benchmarks_are_found() -> None:
    expected = {
        "archives.py",
        "gcp_function.py",
        "incremental.py",
        "layers.py",
        "pull.py",
        "serve.py",
    }
    assert expected <= set(SCRIPTS)


@pytest.mark.e2e
@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke(script: str, request: pytest.FixtureRequest) -> None:
    extra = []
    if script == "builder_store.py":  # runs the builder image: the session's, built once
        extra = ["--image", request.getfixturevalue("builder_image")]
    try:
        run = subprocess.run(
            [sys.executable, str(BENCH / script), "--smoke", *extra],
            capture_output=True, text=True, timeout=300, cwd=BENCH.parent,
        )  # fmt: skip
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{script} --smoke took over {e.timeout} s:\n{e.stdout}\n{e.stderr}")
    assert run.returncode == 0, f"{script} --smoke failed:\n{run.stdout}\n{run.stderr}"
