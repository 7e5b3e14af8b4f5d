"""Every benchmark in bench/ runs in its smoke mode (tiny inputs, seconds), so that a broken
benchmark fails here rather than when someone next wants its figures."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.registries import REPO

BENCH = REPO / "bench"
# The commands, each run as `python -m bench.NAME` from the repository's root.
COMMANDS = sorted(p.stem for p in BENCH.glob("*.py") if p.name != "__init__.py")


def test_the_benchmarks_are_found() -> None:
    expected = {"archives", "gcp_function", "incremental", "layers", "pull", "serve",
                "gcp_herd", "gcp_warm", "gcp_new_images"}  # fmt: skip
    assert expected <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_bench_holds_only_commands(command: str) -> None:
    """Shared code belongs in bench/lib, so that what bench/ lists is what can be run."""
    assert 'if __name__ == "__main__":' in (BENCH / f"{command}.py").read_text()


@pytest.mark.e2e
@pytest.mark.parametrize("command", COMMANDS)
def test_smoke(command: str, request: pytest.FixtureRequest) -> None:
    extra = []
    if command == "builder_store":  # runs the builder image: the session's, built once
        extra = ["--image", request.getfixturevalue("builder_image")]
    try:
        run = subprocess.run(
            [sys.executable, "-m", f"bench.{command}", "--smoke", *extra],
            capture_output=True, text=True, timeout=300, cwd=REPO,
        )  # fmt: skip
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"bench.{command} --smoke took over {e.timeout} s:\n{e.stdout}\n{e.stderr}")
    assert run.returncode == 0, f"bench.{command} --smoke failed:\n{run.stdout}\n{run.stderr}"
