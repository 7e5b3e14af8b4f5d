"""Google Cloud mode's services run for the benchmarks: their Firestore calls counted
(bench/lib/firestore_reads.py), their processes found and their CPU time read from /proc.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from bench.lib.firestore_reads import LOG_VAR
from bench.lib.harness import cpu_seconds
from tests.helpers.emulators import Emulators, GcpRegistry
from tests.helpers.registries import OCI

ACCEPT = {"Accept": OCI}


class CountedRegistry(GcpRegistry):
    """Both services run under the Firestore counter, which logs where LOG_VAR says."""

    launcher = (sys.executable, "-m", "bench.lib.firestore_reads")


def start(root: Path, emulators: Emulators, **env: str) -> GcpRegistry:
    """A registry and builder whose Firestore RPCs are logged (to root/firestore.jsonl), each
    with a fresh collection prefix, so that nothing is found in Firestore at first."""
    root.mkdir(parents=True, exist_ok=True)
    reg = CountedRegistry(
        root,
        emulators,
        **{
            "NIXERY_FIRESTORE_PREFIX": f"bench{uuid.uuid4().hex[:8]}_",
            "NIX_TIMEOUT": "600",
            LOG_VAR: str(root / "firestore.jsonl"),
            **env,
        },
    )
    try:
        return reg.start()
    except BaseException:
        stop(reg)
        raise


def stop(reg: GcpRegistry) -> None:
    """Stops both services and whatever they left running: Nix runs in sessions of its own,
    which killing the services' process groups does not reach."""
    builder = reg.builder.proc.pid if reg.builder else None
    left = descendants(builder) if builder else set()
    reg.stop()
    for pid in left - {builder}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def rpc_log(reg: GcpRegistry) -> list[dict[str, Any]]:
    path = Path(reg.env[LOG_VAR])
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def role(reg: GcpRegistry, entry: dict[str, Any]) -> str:
    if reg.registry and entry["sid"] == reg.registry.proc.pid:
        return "registry"
    if reg.builder and entry["sid"] == reg.builder.proc.pid:
        return "builder"
    return "other"


def descendants(root: int) -> set[int]:
    """`root` and every process under it, from the parent pids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


class FunctionInstance(CountedRegistry):
    """One more instance of a running registry's function, as Cloud Run starts under load:
    the same Firestore collections, builder and counter log; no builder of its own."""

    def __init__(self, root: Path, emulators: Emulators, of: GcpRegistry) -> None:
        shared = {k: v for k, v in of.env.items() if k.startswith("NIXERY_") or k == "THREADS"}
        super().__init__(root, emulators, **shared, NIX_TIMEOUT=of.env["NIX_TIMEOUT"])

    def start_builder(self) -> None:
        self.builder = None


def instances(reg: GcpRegistry, emulators: Emulators, count: int) -> list[GcpRegistry]:
    """``reg`` and count - 1 more function instances beside it, each warmed with a tag list
    (the first real request loads the function's Google Cloud wiring)."""
    started = [reg]
    try:
        for i in range(1, count):
            started.append(FunctionInstance(reg.root / f"instance{i}", emulators, reg).start())
    except BaseException:
        for extra in started[1:]:
            extra.stop()
        raise
    for instance in started:
        instance.get("/v2/shell/hello/tags/list").raise_for_status()
    return started


def all_may_wait(threads: int) -> dict[str, str]:
    """The function's bounds on waiting requests (``service/waiters.py``) at their most, all
    but one of an instance's THREADS: the benchmarks' clients all come from 127.0.0.1 and
    stand for as many addresses, and a scenario measures what waiting costs, not refusals."""
    most = str(threads - 1)
    return {"NIXERY_MAX_WAITERS": most, "NIXERY_CLIENT_WAITERS": most,
            "NIXERY_BUILD_WAITERS": most}  # fmt: skip


def registry_cpu(functions: list[GcpRegistry]) -> float:
    """CPU seconds of the function processes so far (functions-framework and its worker)."""
    return sum(
        cpu_seconds(pid)
        for f in functions
        if f.registry
        for pid in descendants(f.registry.proc.pid)
    )


@dataclass
class Pull:
    """One client's pull: the manifest's status, the blobs it names and the answers that
    were not a redirect to them, its requests, and when it began, had its manifest and
    ended (time.time)."""

    status: int
    blobs: int = 0
    blob_errors: int = 0
    requests: int = 1
    began: float = 0.0
    answered: float = 0.0
    ended: float = 0.0
    error: str = ""  # the first: an answer's status and message, or the client's exception


def pull(base: str, name: str, timeout: float = 600) -> Pull:
    """What a client asks the registry for before it downloads: the manifest by tag, then
    each blob, answered with a redirect to the bucket (not followed)."""
    session = requests.Session()
    began = time.time()
    try:
        answer = session.get(f"{base}/v2/{name}/manifests/latest", headers=ACCEPT, timeout=timeout)
    except requests.RequestException as e:
        return Pull(0, began=began, ended=time.time(), error=f"manifest: {type(e).__name__}")
    result = Pull(answer.status_code, began=began, answered=time.time())
    if answer.status_code != 200:
        result.error = f"manifest: {answer.status_code} {answer.text[:120]}"
    if answer.status_code == 200:
        body = answer.json()
        for blob in [body["config"], *body["layers"]]:
            result.blobs += 1
            result.requests += 1
            try:
                got = session.get(f"{base}/v2/{name}/blobs/{blob['digest']}", timeout=timeout,
                                  allow_redirects=False)  # fmt: skip
                if got.status_code != 307:
                    result.blob_errors += 1
                    result.error = result.error or f"blob: {got.status_code} {got.text[:120]}"
            except requests.RequestException as e:
                result.blob_errors += 1
                result.error = result.error or f"blob: {type(e).__name__}"
    result.ended = time.time()
    return result


def error_kinds(pulls: list[Pull]) -> dict[str, int]:
    """The pulls' first errors, counted by kind (digests and numbers left out)."""
    return dict(Counter(re.sub(r"[0-9a-f]{12,}|\d+\.\d+", "*", p.error) for p in pulls if p.error))


def all_pull(functions: list[GcpRegistry], names: list[str], timeout: float = 600) -> list[Pull]:
    """One client per name, all released at once, spread over the instances in turn."""
    barrier = threading.Barrier(len(names))

    def run(i: int) -> Pull:
        barrier.wait()
        return pull(functions[i % len(functions)].url, names[i], timeout)

    with ThreadPoolExecutor(len(names)) as pool:
        return list(pool.map(run, range(len(names))))


def builds_started(reg: GcpRegistry) -> Counter[str]:
    """How many times the builder started each image (by its packages)."""
    return Counter(
        re.findall(r": starting (\S+) for ", reg.builder_log.read_text(errors="replace"))
    )


def publications(reg: GcpRegistry) -> list[float]:
    """When the builder committed each image's publication (the batch that writes its
    manifests and its record), from the Firestore counter's log."""
    return [
        e["t"]
        for e in rpc_log(reg)
        if e.get("rpc") == "commit" and role(reg, e) == "builder"
        and any("manifests/" in d for d in e["docs"]) and any("builds/" in d for d in e["docs"])
    ]  # fmt: skip


@contextlib.contextmanager
def services(
    work: Path, count: int, dispatches: int | None = None, **env: str
) -> Iterator[tuple[Emulators, GcpRegistry, list[GcpRegistry]]]:
    """The emulators (Cloud Tasks sending ``dispatches`` tasks at once), a counted registry
    with its builder (`start`, given `env`) and `count` function instances in all
    (`instances`); all stopped, and `work` removed, after."""
    emulators = Emulators(work / "emulators", dispatches)
    try:
        reg = start(work / "services", emulators, **env)
        try:
            functions = instances(reg, emulators, count)
            try:
                yield emulators, reg, functions
            finally:
                for extra in functions[1:]:
                    extra.stop()
        finally:
            stop(reg)
    finally:
        emulators.stop()
        shutil.rmtree(work, ignore_errors=True)
