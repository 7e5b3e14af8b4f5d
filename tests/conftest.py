"""Fixtures that run real registries, registry clients and (``helpers.emulators``) Google
Cloud's emulators; the code behind them is in ``tests.helpers``, where benchmarks import it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.clients import Clients, Containerd
from tests.helpers.registries import MULTI_PLATFORM, Registry


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("registry") / "storage", NIX_TIMEOUT="3").start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def multi_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A local registry serving both platforms (MULTI_PLATFORM)."""
    storage = tmp_path_factory.mktemp("multi") / "storage"
    reg = Registry(storage, NIX_TIMEOUT="3", **MULTI_PLATFORM).start()
    yield reg
    reg.stop()


@pytest.fixture
def make_registry(tmp_path: Path) -> Iterator:
    """Starts extra registries for one test; all are stopped after it."""
    started: list[Registry] = []

    def make(storage: Path | None = None, **env: str) -> Registry:
        reg = Registry(storage or tmp_path / f"storage{len(started)}", **env).start()
        started.append(reg)
        return reg

    yield make
    for reg in started:
        reg.stop()


@pytest.fixture(scope="session")
def clients(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Clients:
    for tool in ("skopeo", "podman", "runc"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run scripts/setup.sh --test")
    return Clients(tmp_path_factory.mktemp("clients"), registry.host)


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    for tool in ("containerd", "ctr", "runc"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run scripts/setup.sh --test")
    daemon = Containerd(tmp_path_factory.mktemp("containerd"))
    yield daemon
    daemon.stop()


# Google Cloud mode's fixtures (emulators, gcp_registry) live in their own module.
pytest_plugins = ["tests.helpers.emulators"]
