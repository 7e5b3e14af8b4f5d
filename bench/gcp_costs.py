"""Three costs of Google Cloud mode, against the emulators, through its entry points only.

    .venv/bin/python -m bench.gcp_costs [--smoke] [--gb G] [--only imports|reads|memory] [--keep]

1. imports: what the registry function has loaded once it has answered a ping, a tag list,
   a cached manifest, a blob, an unknown digest and a manifest that had to be built: a fresh
   interpreter runs `functions_framework.create_app(target="registry")` and its test client
   (bench/lib/import_probe.py).
2. reads: Firestore documents read (and written) by the registry function and by the builder,
   each counted in its own processes, during one cold pull of `shell/hello` (fresh collection
   prefix). Both services run under bench/lib/firestore_reads.py, which wraps every RPC stub
   of the Firestore client library's gRPC transports and logs one line per call; a read is
   one document asked for (BatchGetDocuments, GetDocument) or returned (RunQuery, Listen).
3. memory: the builder's peak memory while it builds `big`, a derivation of G GiB of random
   bytes in 4 files, pulled through the registry function: the RSS of the builder's Python
   processes (gunicorn master and workers; Nix's processes apart) and the bytes under its
   TMPDIR (on Cloud Run the disk is memory), sampled every 0.2 s, and the build's seconds.

Depends only on the entry points, their environment variables and the tests' harness
(`tests/helpers/emulators.py`), so that it measures any version of the code. Prints a
summary, then all the figures as one JSON line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.lib.firestore_reads import LOG_VAR
from bench.lib.gcp_services import descendants, role, rpc_log, start, stop
from bench.lib.harness import ENV, command_parser, cpu_seconds
from tests.helpers.boundary import building_modules
from tests.helpers.emulators import Emulators, GcpRegistry
from tests.helpers.registries import OCI, REPO, big_set

ACCEPT = {"Accept": OCI}
IMPORT_PROBE = Path(__file__).parent / "lib" / "import_probe.py"
HARNESS_FILES = {"registry.log", "builder.log", "key.json", "firestore.jsonl"}  # not scratch
SAMPLE_SECONDS = 0.2
PARTS = 4  # files in `big`

# --- 1. the registry function's import set ----------------------------------------------


def measure_imports(emulators: Emulators, work: Path) -> dict[str, Any]:
    """The function's modules after its requests, in a fresh interpreter. A running registry
    (its builder builds the miss) first publishes `shell/hello`, so that one manifest is
    served from the backends and one is built."""
    reg = start(work / "imports", emulators)
    try:
        warm = reg.get("/v2/shell/hello/manifests/latest", headers=ACCEPT)
        if warm.status_code != 200:
            raise RuntimeError(f"warming shell/hello: {warm.status_code} {warm.text[:500]}")
        env = {k: v for k, v in reg.env.items() if k != LOG_VAR}
        env["NIXERY_BUILD_WAIT"] = "300"
        main = REPO / "functions" / "registry" / "main.py"
        run = subprocess.run(
            [sys.executable, "-P", str(IMPORT_PROBE), str(main)],
            env=env, cwd=work, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        if run.returncode != 0:
            raise RuntimeError(f"the import probe failed:\n{run.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(run.stdout.splitlines()[-1])
    finally:
        stop(reg)
    modules = set(result["nixery"])
    result["top_level_packages"] = len(result["top_level"])
    result["pipeline_loaded"] = building_modules(modules)
    result["services_nixery_files"] = service_files(reg)
    return result


def print_imports(r: dict[str, Any]) -> None:
    print("\n== 1. registry function: modules loaded ==")
    print("answers: " + ", ".join(f"{k} {v}" for k, v in r["answers"].items()))
    print(f"nixery code: {r['nixery_file']}")
    after = r["after_ping"]
    print(f"after the ping: {after['total']} modules; nixery: {', '.join(after['nixery'])}")
    print(f"after all requests: {r['total']} modules; {len(r['nixery'])} of nixery:")
    for m in r["nixery"]:
        print(f"    {m}")
    loaded = r["pipeline_loaded"]
    print("modules that build images: " + (", ".join(loaded) + " LOADED" if loaded else "none"))
    print(f"top-level packages ({r['top_level_packages']}): {' '.join(r.pop('top_level'))}")


# --- 2. Firestore reads per cold pull ---------------------------------------------------


def service_files(reg: GcpRegistry) -> dict[str, list[str]]:
    """Where each service's nixery package was loaded from, as the counter saw it."""
    files: dict[str, set[str]] = {}
    for e in rpc_log(reg):
        if e.get("event") == "patched":
            files.setdefault(role(reg, e), set()).add(str(e["nixery"]))
    return {k: sorted(v) for k, v in files.items()}


def tally(entries: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    calls = [e for e in entries if "rpc" in e and "error" not in e]
    reads = [e for e in calls if e["reads"]]
    direct = [e for e in reads if not e["tx"] and e["rpc"] != "listen result"]
    per_doc = Counter(d for e in direct for d in e["docs"])
    top = per_doc.most_common(1)

    def collection(doc: str) -> str:
        name = doc.split("/", 1)[0]
        return name.removeprefix(prefix)

    return {
        "reads": sum(e["reads"] for e in calls),
        "reads_in_transactions": sum(e["reads"] for e in calls if e["tx"]),
        "reads_by_listeners": sum(e["reads"] for e in calls if e["rpc"] == "listen result"),
        "writes": sum(e["writes"] for e in calls),
        "rpcs": dict(Counter(e["rpc"] for e in calls if not e["rpc"].endswith(" result"))),
        "reads_by_collection": dict(
            Counter(collection(d) for e in reads for d in e["docs"] or ["?"])
        ),
        "writes_by_collection": dict(
            Counter(collection(d) for e in calls if e["writes"] for d in e["docs"] or ["?"])
        ),
        "most_read_document": {"collection": collection(top[0][0]), "reads": top[0][1]}
        if top
        else None,
        "processes": len({e["pid"] for e in calls}),
        "errors": [e["error"] for e in entries if "error" in e],
    }


def measure_reads(emulators: Emulators, work: Path) -> dict[str, Any]:
    reg = start(work / "reads", emulators)
    prefix = reg.env["NIXERY_FIRESTORE_PREFIX"]
    try:
        started = time.time()
        got = reg.get("/v2/shell/hello/manifests/latest", headers=ACCEPT, timeout=600)
        manifest_done = time.time()
        if got.status_code != 200:
            raise RuntimeError(f"cold pull of shell/hello: {got.status_code} {got.text[:500]}")
        body = got.json()
        for blob in [body["config"], *body["layers"]]:
            answer = reg.get(f"/v2/shell/hello/blobs/{blob['digest']}")
            if answer.status_code not in (200, 307):
                raise RuntimeError(f"blob {blob['digest']}: {answer.status_code}")
        time.sleep(1)  # the builder's last calls, after it answered its task
        entries = rpc_log(reg)
        out: dict[str, Any] = {
            "image": "shell/hello",
            "manifest_seconds": round(manifest_done - started, 2),
            "nixery_files": service_files(reg),
        }
        for name in ("registry", "builder"):
            mine = [e for e in entries if role(reg, e) == name]
            out[name] = tally(mine, prefix)
            out[name]["during_manifest_get"] = tally(
                [e for e in mine if started <= e.get("t", 0) <= manifest_done], prefix
            )["reads"]
            out[name]["before_pull"] = tally(
                [e for e in mine if e.get("t", 0) < started], prefix
            )["reads"]  # fmt: skip
        others = [e for e in entries if "rpc" in e and role(reg, e) == "other"]
        out["other_processes_reads"] = sum(e.get("reads", 0) for e in others)
        top = out["registry"]["most_read_document"]
        # The registry's direct reads of its most-read document outside transactions: the
        # status look-up and the start's read of the build record, then one per poll.
        out["registry_polls"] = max(0, top["reads"] - 2) if top else 0
        return out
    finally:
        stop(reg)


def print_reads(r: dict[str, Any]) -> None:
    print(f"\n== 2. Firestore calls during one cold pull of {r['image']} ==")
    print(f"manifest GET (build included): {r['manifest_seconds']} s")
    for name in ("registry", "builder"):
        t = r[name]
        print(
            f"{name}: {t['reads']} document reads ({t['reads_in_transactions']} in transactions, "
            f"{t['during_manifest_get']} during the manifest GET, {t['before_pull']} before it), "
            f"{t['writes']} document writes, over {t['processes']} process(es); "
            f"{t['reads_by_listeners']} of the reads by listeners"
        )
        print(f"    reads by collection: {t['reads_by_collection']}")
        print(f"    writes by collection: {t['writes_by_collection']}")
        print(f"    RPCs: {t['rpcs']}")
        if t["errors"]:
            print(f"    hook errors: {t['errors'][:3]}")
    top = r["registry"]["most_read_document"]
    if top:
        print(
            f"registry polls: {r['registry_polls']} (its {top['reads']} direct reads of one "
            f"{top['collection']} document, less the status look-up and the start's read)"
        )
    print(f"nixery code of the services: {r['nixery_files']}")
    for name in ("registry", "builder"):
        if name not in r["nixery_files"]:
            print(f"WARNING: the {name} never loaded Firestore's gRPC transport: nothing counted")


# --- 3. the builder's peak memory for a big image ---------------------------------------


def proc_memory(pid: int) -> tuple[bool, int, int] | None:
    """(a Python process?, VmRSS, VmHWM) in bytes, or None for a process gone or a zombie."""
    try:
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if "VmRSS" not in fields:
        return None
    kib = [int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")]
    return exe.startswith("python"), kib[0], kib[1]


def scratch_bytes(tmpdir: Path) -> int:
    """Bytes of files under the builder's TMPDIR, without the harness's own files and Nix's
    build directories; each inode once."""
    seen: set[int] = set()
    total = 0
    for top in list(tmpdir.iterdir()) if tmpdir.exists() else []:
        if top.name in HARNESS_FILES or top.name.startswith("nix-build-"):
            continue
        paths = [top] if not top.is_dir() or top.is_symlink() else []
        for base, dirs, files in os.walk(top) if not paths else []:
            paths.extend(Path(base, f) for f in files)
            paths.extend(Path(base, d) for d in dirs if Path(base, d).is_symlink())
        for p in paths:
            try:
                st = p.lstat()
            except OSError:
                continue
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


class Sampler(threading.Thread):
    """Samples the builder's process tree and TMPDIR every SAMPLE_SECONDS."""

    def __init__(self, root_pid: int, tmpdir: Path) -> None:
        super().__init__(daemon=True)
        self.root_pid = root_pid
        self.tmpdir = tmpdir
        self.stopping = threading.Event()
        self.samples = 0
        self.peak_rss = 0  # the builder's Python processes, summed
        self.peak_hwm = 0  # the largest VmHWM of one of them
        self.peak_scratch = 0
        self.peak_total = 0  # RSS plus scratch, in the same sample
        self.peak_nix_rss = 0  # every other process under the builder (Nix and its builds)
        self.nix_seconds = 0.0
        self.python_pids: set[int] = set()
        self.cpu: dict[int, tuple[float, float]] = {}  # first and last CPU seconds seen

    def sample(self) -> tuple[int, int]:
        rss = nix_rss = 0
        for pid in descendants(self.root_pid):
            mem = proc_memory(pid)
            if mem is None:
                continue
            python, vm_rss, vm_hwm = mem
            if python:
                self.python_pids.add(pid)
                cpu = cpu_seconds(pid)
                self.cpu[pid] = (self.cpu.get(pid, (cpu, cpu))[0], cpu)
                rss += vm_rss
                self.peak_hwm = max(self.peak_hwm, vm_hwm)
            else:
                nix_rss += vm_rss
        scratch = scratch_bytes(self.tmpdir)
        self.samples += 1
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_nix_rss = max(self.peak_nix_rss, nix_rss)
        self.peak_scratch = max(self.peak_scratch, scratch)
        self.peak_total = max(self.peak_total, rss + scratch)
        return rss, nix_rss

    def run(self) -> None:
        last = time.monotonic()
        while not self.stopping.wait(SAMPLE_SECONDS):
            _, nix_rss = self.sample()
            now = time.monotonic()
            if nix_rss:
                self.nix_seconds += now - last
            last = now


def delete_big(pkgs: Path) -> None:
    """Removes `big` from the Nix store again (a few GiB a run), if nothing holds it."""
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--json", "-E", f"(import {pkgs} {{}}).big.outPath"],
        capture_output=True, text=True, env=ENV, check=False,
    )  # fmt: skip
    if out.returncode == 0:
        subprocess.run(
            ["nix-store", "--delete", json.loads(out.stdout)],
            capture_output=True, env=ENV, check=False,
        )  # fmt: skip


def measure_memory(emulators: Emulators, work: Path, mib: int) -> dict[str, Any]:
    part = max(1, mib // PARTS)
    pkgs = big_set(work / "big-pkgs", PARTS, part)
    reg = start(
        work / "memory", emulators,
        # As long as a function may wait (its 3600 s maximum, less 30 s to answer), and all
        # of Nix's share of the default 1800 s build deadline.
        NIXERY_PKGS_PATH=str(pkgs), NIXERY_BUILD_WAIT="3570", NIX_TIMEOUT="1440",
    )  # fmt: skip
    try:
        assert reg.builder is not None
        sampler = Sampler(reg.builder.proc.pid, Path(reg.env["TMPDIR"]))
        idle_rss, _ = sampler.sample()
        idle_hwm = sampler.peak_hwm
        gcs_cpu = cpu_seconds(emulators.gcs.proc.pid)
        sampler.start()
        started = time.perf_counter()
        got = reg.get("/v2/big/manifests/latest", headers=ACCEPT, timeout=86400)
        seconds = time.perf_counter() - started
        sampler.stopping.set()
        sampler.join()
        sampler.sample()
        gcs_cpu = cpu_seconds(emulators.gcs.proc.pid) - gcs_cpu
        if got.status_code != 200:
            raise RuntimeError(f"pull of big: {got.status_code} {got.text[:2000]}")
        layers = got.json()["layers"]
        return {
            "image_mib": part * PARTS,
            "layers": len(layers),
            "compressed_bytes": sum(layer["size"] for layer in layers),
            "build_seconds": round(seconds, 1),
            "nix_seconds": round(sampler.nix_seconds, 1),
            "builder_cpu_seconds": round(sum(b - a for a, b in sampler.cpu.values()), 1),
            "gcs_emulator_cpu_seconds": round(gcs_cpu, 1),
            "idle_rss_bytes": idle_rss,
            "idle_hwm_bytes": idle_hwm,
            "peak_rss_bytes": sampler.peak_rss,
            "peak_hwm_bytes": sampler.peak_hwm,
            "peak_scratch_bytes": sampler.peak_scratch,
            "peak_rss_plus_scratch_bytes": sampler.peak_total,
            "peak_nix_rss_bytes": sampler.peak_nix_rss,
            "python_processes": len(sampler.python_pids),
            "samples": sampler.samples,
            "nixery_files": service_files(reg),
        }
    finally:
        stop(reg)
        delete_big(pkgs)


def mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def print_memory(r: dict[str, Any]) -> None:
    print(f"\n== 3. builder memory while it builds a {r['image_mib']} MiB image ==")
    print(
        f"build: {r['build_seconds']} s for the manifest GET (Nix processes alive "
        f"{r['nix_seconds']} s); {r['layers']} layers, {mib(r['compressed_bytes'])} compressed"
    )
    print(
        f"CPU: builder {r['builder_cpu_seconds']} s, fake-gcs-server "
        f"{r['gcs_emulator_cpu_seconds']} s (its in-memory uploads are slow for big objects)"
    )
    print(
        f"builder Python processes ({r['python_processes']}): peak RSS {mib(r['peak_rss_bytes'])} "
        f"(idle {mib(r['idle_rss_bytes'])}), largest VmHWM {mib(r['peak_hwm_bytes'])}"
    )
    print(
        f"scratch under TMPDIR: peak {mib(r['peak_scratch_bytes'])}; RSS + scratch at once: "
        f"peak {mib(r['peak_rss_plus_scratch_bytes'])}"
    )
    print(f"Nix and its builds (apart): peak RSS {mib(r['peak_nix_rss_bytes'])}")
    print(f"samples: {r['samples']} every {SAMPLE_SECONDS} s; nixery code: {r['nixery_files']}")


# --- main -------------------------------------------------------------------------------


def main() -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--gb", type=float, default=2.0, help="size of `big` in GiB (figure 3)")
    parser.add_argument("--only", choices=["imports", "reads", "memory"])
    parser.add_argument("--smoke", action="store_true", help="a check in seconds: a 20 MiB big")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    size = 20 if args.smoke else int(args.gb * 1024)
    if args.smoke:
        print("smoke run (big of 20 MiB): the memory figures below are not measurements")
    work = Path(tempfile.mkdtemp(prefix="nixery-bench-gcp-"))
    print(f"code under test: {REPO}; work directory: {work}", flush=True)
    figures: dict[str, Any] = {}
    emulators = Emulators(work / "emulators")
    try:
        if args.only in (None, "reads"):
            figures["reads"] = measure_reads(emulators, work)
            print_reads(figures["reads"])
        if args.only in (None, "imports"):
            figures["imports"] = measure_imports(emulators, work)
            print_imports(figures["imports"])
        if args.only in (None, "memory"):
            figures["memory"] = measure_memory(emulators, work, size)
            print_memory(figures["memory"])
    except BaseException:
        for log in sorted(work.glob("*/*.log")):
            print(f"--- {log} (end) ---\n{log.read_text(errors='replace')[-2000:]}")
        args.keep = True
        raise
    finally:
        emulators.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"code": str(REPO), "smoke": args.smoke, **figures}, sort_keys=True))


if __name__ == "__main__":
    main()
