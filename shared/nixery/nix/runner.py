"""Nix: evaluate a package list against a package set, build it, and read its closure graph.

User input reaches Nix only as data: the package names travel as a JSON string through
``--argstr`` into ``prepare-image/default.nix``, which never splices them into code.

Evaluation is restricted (``restrict-eval``): it may read the package set's checkout, the
``prepare-image`` expression and the host paths the operator allows (NIXERY_EVAL_ALLOW, for
sets that import host files, like the demo set), and no URL at all; no search path comes from
the environment, and nothing is built during evaluation (no import from derivation). Only
trusted revisions are evaluated in the first place (``sources.history``): this is the second
wall, should one of them read the server's files or fetch what it likes. A flake is read in
flakes' pure evaluation instead (``nix.flakes``): no host path at all, inputs as its lock pins
them.

A failure is classified from Nix's exit and log, because the answer differs: a failed
derivation or an evaluation error is permanent (``BuildFailed``, remembered), a builder past
``NIX_TIMEOUT`` too (``BuildTimedOut``), while a failed download from a substituter, a full
disk, memory exhaustion or a killed Nix say nothing about the request (``BuildInterrupted``,
retried).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nixery.caches import BoundedCache, KeyedLocks
from nixery.errors import (
    BuildFailed,
    BuildInterrupted,
    BuildTimedOut,
    ConfigError,
    ConflictingInterpreters,
    UnknownPackages,
)
from nixery.nix import flakes
from nixery.nix.flakes import LockedFlake
from nixery.nix.path_info import PackageMeta, StorePath, parse_meta, parse_path_info, sri
from nixery.records import Environment, FlakeLock, FlakeOrigin

log = logging.getLogger(__name__)

# How many lines of Nix's output an error keeps: enough for the failing builder's message.
LOG_TAIL = 40
# Evaluation of real nixpkgs takes seconds; minutes mean something is wrong.
EVAL_TIMEOUT = 600.0
# Seconds Nix gets to stop its builders when told to, before it is killed.
STOP_GRACE = 10.0

# The `nix` command's flags for `path-info` on Nix 2.8, where it is still experimental.
NIX_COMMAND = ("--extra-experimental-features", "nix-command")
# Evaluation sees only the paths given with -I, fetches no URL and builds nothing; no
# experimental feature either, whatever nix.conf enables (flakes' fetchTree reads any path).
RESTRICTED = (
    *("--option", "experimental-features", ""),
    *("--option", "restrict-eval", "true"),
    *("--option", "allowed-uris", ""),
    *("--option", "allow-import-from-derivation", "false"),
)
# What a client reads of Nix's output names the package set and the server's directories
# by these, never by where they lie (the server's log keeps the paths).
PACKAGE_SET = "<package set>"
PREPARE_IMAGE = "<prepare-image>"
STORAGE = "<storage>"
# The oldest Nix this code is tested with (Debian 12's); the builder image has 2.26.
MIN_NIX_VERSION = "2.8"


def check_nix_version() -> str:
    """The running Nix's version, or ConfigError at start if it is too old or missing."""
    try:
        out = subprocess.run(
            ["nix", "--version"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise ConfigError(f"cannot run `nix --version`: {e}") from e
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    if match is None:
        raise ConfigError(f"cannot read Nix's version from {out.strip()!r}")
    version = tuple(int(n or 0) for n in match.groups())
    minimum = tuple(int(n) for n in MIN_NIX_VERSION.split("."))
    if version < minimum:
        raise ConfigError(
            f"Nix {match.group(0)} is older than {MIN_NIX_VERSION}, the oldest this builder "
            "supports: install a newer Nix"
        )
    return match.group(0)


# A build that fails where it can see the machine's /usr: only a sandboxed build succeeds.
# The nonce makes a new derivation each time, so that an old result never answers.
_SANDBOX_PROBE = """derivation {{
  name = "nixery-sandbox-probe"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "if [ -e /usr ]; then exit 1; fi; echo > $out" ]; nonce = "{nonce}";
}}"""


def builds_are_sandboxed() -> bool:
    """Whether Nix runs builds in its sandbox here: asked of Nix itself with a tiny build, since
    with ``sandbox-fallback`` it quietly builds without one where the kernel refuses it."""
    probe = _SANDBOX_PROBE.format(nonce=time.time_ns())
    try:
        done = subprocess.run(
            ["nix-build", "--no-out-link", "--option", "substituters", "", "-E", probe],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def report_sandbox() -> None:
    """Says at start whether builds are confined, so that an operator knows what runs how."""
    if builds_are_sandboxed():
        log.info("builds run in Nix's sandbox")
    else:
        log.warning(
            "builds run WITHOUT Nix's sandbox (turned off, or the kernel refuses its "
            "namespaces here): they see this machine as the Nix user does; only trusted "
            "revisions are built (docs/security.md)"
        )


@dataclass(frozen=True)
class BuildResult:
    """The built packages (name -> output path, in request order), their whole closure, and
    what the package set says of the paths it knows (store path -> meta)."""

    outputs: dict[str, str]
    closure: dict[str, StorePath]
    meta: dict[str, PackageMeta]
    main_programs: dict[str, str | None]  # package name -> its meta.mainProgram, if any
    absent: tuple[str, ...] = ()  # optional packages the flake lacks, left out
    flake: FlakeLock | None = None  # the set was read as this flake
    # The interpreters' environments that hold the packages of nested sets (an environment
    # is then those packages' output), and the nested sets' packages left plain.
    environments: tuple[Environment, ...] = ()
    plain: tuple[str, ...] = ()


# A build's outputs are garbage-collector roots while its image is made: links in a directory
# of this process's, which Nix registers in its auto roots. What a killed process leaves
# behind is removed by the next one (its directory is named after its pid).
ROOTS = Path(tempfile.gettempdir()) / "nixery-roots"
AUTO_ROOTS = Path("/nix/var/nix/gcroots/auto")


def _own_roots() -> Path:
    path = ROOTS / str(os.getpid())
    path.mkdir(parents=True, exist_ok=True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_roots() -> None:
    """Removes the root directories of processes that are gone, and the auto roots that
    pointed into ours and dangle: otherwise every build would leave one behind for good."""
    with contextlib.suppress(OSError):
        for entry in ROOTS.iterdir():
            if entry.name.isdigit() and not _alive(int(entry.name)):
                shutil.rmtree(entry, ignore_errors=True)
    with contextlib.suppress(OSError):
        for link in AUTO_ROOTS.iterdir():
            target = os.readlink(link)
            if target.startswith(str(ROOTS) + "/") and not os.path.lexists(target):
                link.unlink(missing_ok=True)


def _without(
    environments: Iterable[Environment], left_out: Sequence[str], outputs: Mapping[str, str]
) -> tuple[Environment, ...]:
    """The environments without the packages they left out, and without those that hold
    none of the name's packages any more."""
    kept = set(outputs.values())
    gone = {outputs[name] for name in left_out}
    return tuple(
        replace(e, members=tuple(m for m in e.members if m not in left_out),
                contents=tuple(c for c in e.contents if c not in gone))
        for e in environments
        if e.path in kept
    )  # fmt: skip


class Nix:
    """Runs the Nix commands of one build; holds no state between builds."""

    def __init__(
        self,
        prepare_image: Path,
        timeout: int,
        eval_allow: Sequence[Path] = (),
        private: Mapping[Path, str] | None = None,
    ) -> None:
        """``private``: the server's directories (its storage, its checkouts) and the token
        that names each in what clients read; the package set's and prepare-image's are
        known here."""
        # Resolved: a restricted evaluation compares real paths with the allowed ones.
        self.expression = (prepare_image / "default.nix").resolve()
        self.timeout = timeout
        self.eval_allow = tuple(eval_allow)
        self.private = {prepare_image: PREPARE_IMAGE, **(private or {})}
        # Checkouts already in the store, by directory and origin: checked again before use,
        # since the store is collected between builds.
        self._locked: BoundedCache[LockedFlake] = BoundedCache(16)
        self._locking = KeyedLocks()

    @contextmanager
    def build(
        self,
        source: Path,
        packages: Sequence[str],
        system: str,
        deadline: float = math.inf,
        *,
        flake: FlakeOrigin | None = None,
        optional: Sequence[str] = (),
        timed: Callable[[str], AbstractContextManager[None]] = lambda _: nullcontext(),
    ) -> Iterator[BuildResult]:
        """Builds the packages by ``deadline`` (a ``time.monotonic()`` value), or raises
        ``BuildTimedOut``; their outputs stay garbage-collector roots until the block ends,
        so that a `nix-collect-garbage` meanwhile cannot delete what is being archived.
        With ``flake``, the checkout (which holds flake.nix: the caller looked) is read as a
        flake from that origin, and
        the ``optional`` packages it lacks are left out rather than missing. ``timed`` times
        the evaluation (``evaluate``) and the realisation (``realise``)."""
        with timed("evaluate"):
            locked = self._lock(source, flake, deadline)
            plan = self._plan(source, packages, system, deadline, locked, optional)
        if too_old := plan.get("nixTooOld"):
            raise BuildFailed(
                f"the package set needs Nix >= {too_old['required']}, "
                f"and this builder runs Nix {too_old['running']}"
            )
        if plan["missing"]:
            raise UnknownPackages(plan["missing"])
        if conflicts := plan.get("conflicts"):
            raise ConflictingInterpreters([
                " and ".join(f"{', '.join(i['names'])} ({i['interpreter']})" for i in group)
                for group in conflicts
            ])  # fmt: skip
        outputs = {p["name"]: p["out"] for p in plan["packages"]}
        programs = {p["name"]: p.get("mainProgram") for p in plan["packages"]}
        environments = tuple(
            Environment(e["language"], e["interpreter"], e["out"], tuple(e["members"]),
                        tuple(e.get("contents", ())), e.get("mainProgram"))
            for e in plan.get("environments", ())
        )  # fmt: skip
        # The environments' packages as themselves, built too (an environment builds them
        # anyway): should their environment leave one out, the image holds it plain.
        own = {p["name"]: p for e in plan.get("environments", ()) for p in e.get("packages", ())}
        plain = tuple(plan.get("plain", ()))
        try:
            with tempfile.TemporaryDirectory(dir=_own_roots()) as roots:
                drvs = sorted({p["drvPath"] for p in [*plan["packages"], *own.values()]})
                cmd = ["nix-store", "--realise", "--timeout", str(self.timeout)]
                realise = [*cmd, "--add-root", f"{roots}/out", *drvs]
                with timed("realise"):
                    self._run(realise, "building", math.inf, deadline, source)
                    closure = self.closure(sorted(set(outputs.values())), deadline)
                if left_out := [name for name, p in own.items() if p["out"] not in closure]:
                    # A set's withPackages keeps what it knows as modules, and the build would
                    # succeed without a package the name asks for: it goes in plain instead,
                    # which is what the user asked for, as before environments.
                    log.warning("kept plain, left out of their environment: %s", left_out)
                    outputs |= {name: own[name]["out"] for name in left_out}
                    environments = _without(environments, left_out, outputs)
                    plain += tuple(left_out)
                    closure = self.closure(sorted(set(outputs.values())), deadline)
                yield BuildResult(
                    outputs, closure, parse_meta(plan.get("meta", ())), programs,
                    tuple(plan.get("absent", ())), locked.lock if locked else None,
                    environments, plain,
                )  # fmt: skip
        finally:
            remove_stale_roots()

    def attribute_names(
        self, source: Path, system: str, deadline: float, flake: FlakeOrigin | None = None
    ) -> list[str]:
        """The package set's attribute names, for the search box (prepare-image's ``names``)."""
        locked = self._lock(source, flake, deadline)
        cmd = self._eval(source, "names", [], system, locked)
        what = "listing the package names"
        names: list[str] = json.loads(
            self._run(cmd, what, EVAL_TIMEOUT, deadline, source, scrub=locked is not None)
        )
        return names

    def closure(self, paths: Sequence[str], deadline: float) -> dict[str, StorePath]:
        cmd = ["nix", *NIX_COMMAND, "path-info", "--json", "--recursive", *paths]
        return parse_path_info(self._run(cmd, "reading the closure", EVAL_TIMEOUT, deadline))

    def _plan(
        self,
        source: Path,
        packages: Sequence[str],
        system: str,
        deadline: float,
        locked: LockedFlake | None = None,
        optional: Sequence[str] = (),
    ) -> dict[str, Any]:
        cmd = self._eval(source, "plan", packages, system, locked, optional)
        try:
            what = "evaluating the package set"
            out = self._run(cmd, what, EVAL_TIMEOUT, deadline, source, scrub=locked is not None)
        except BuildFailed as e:
            explained = flakes.unpinned_deeper(e) if locked else e
            if explained is e:
                raise
            raise explained from e
        plan: dict[str, Any] = json.loads(out)
        return plan

    def _eval(
        self,
        source: Path,
        attr: str,
        packages: Sequence[str],
        system: str,
        locked: LockedFlake | None = None,
        optional: Sequence[str] = (),
    ) -> list[str]:
        """The evaluation of one attribute of prepare-image for the package set: restricted,
        or for a flake pure."""
        data = [
            "--argstr", "packages", json.dumps(list(packages)),
            "--argstr", "system", system,
        ]  # fmt: skip
        if locked is not None:
            return [
                "nix-instantiate", "--eval", "--strict", "--json", "--read-write-mode",
                *flakes.FLAKES, *flakes.PURE, "-E", flakes.ENTRY, "-A", attr,
                "--argstr", "prepare", locked.prepare,
                "--argstr", "prepareHash", locked.prepare_hash,
                "--argstr", "flakeRef", locked.ref,
                "--argstr", "optional", json.dumps(list(optional)),
                *data,
            ]  # fmt: skip
        return [*self._restricted(source, attr, self.eval_allow), *data]

    def _restricted(self, source: Path, attr: str, host: Sequence[Path] = ()) -> list[str]:
        """A restricted evaluation of prepare-image for the checkout ``source``, which may
        also read the ``host`` paths."""
        source = source.resolve()
        allowed = [source, self.expression.parent, *host]
        return [
            "nix-instantiate", "--eval", "--strict", "--json", "--read-write-mode",
            *RESTRICTED, *(arg for path in allowed for arg in ("-I", str(path))),
            str(self.expression), "-A", attr,
            "--argstr", "srcPath", str(source),
        ]  # fmt: skip

    def _lock(
        self, source: Path, origin: FlakeOrigin | None, deadline: float
    ) -> LockedFlake | None:
        """The checkout as pure evaluation reads it, if read as a flake from ``origin``:
        copied into the store with prepare-image (a restricted evaluation that also reads
        which declared inputs its lock lacks), then named by NAR hash."""
        if origin is None:
            return None
        key = f"{source.resolve()}\0{origin}"
        with self._locking.hold(key):  # the platforms of one build: step 1 once
            found = self._locked.get(key)
            if found is not None and all(os.path.exists(p) for p in (found.source, found.prepare)):
                return found
            return self._locked.keep(key, self._copy(source, origin, deadline))

    def _copy(self, source: Path, origin: FlakeOrigin, deadline: float) -> LockedFlake:
        cmd = self._restricted(source, "flakeSource")
        copied = json.loads(self._run(cmd, "reading the flake", EVAL_TIMEOUT, deadline, source))
        flakes.check_pinned(bool(copied["hasLock"]), list(copied["unpinned"]))
        # Roots while cached (one per checkout, replaced): a collection between this and the
        # pure evaluation would otherwise fail the build as if the flake were broken.
        checkout = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
        for path, name in ((copied["source"], f"flake-{checkout}"), (copied["prepare"], "prepare")):
            cmd = ["nix-store", "--realise", "--add-root", str(_own_roots() / name), path]
            self._run(cmd, "keeping the flake's copy", EVAL_TIMEOUT, deadline)
        hashes = self.closure([copied["source"], copied["prepare"]], deadline)
        nar_hash = sri(hashes[copied["source"]].nar_hash)
        return LockedFlake(
            copied["source"],
            flakes.locked_ref(copied["source"], nar_hash, origin),
            copied["prepare"],
            sri(hashes[copied["prepare"]].nar_hash),
            # The copy evaluated, not the checkout, which a path source may change meanwhile.
            flakes.read_lock(Path(copied["source"]), nar_hash, self.eval_allow),
        )

    def _run(
        self,
        cmd: list[str],
        what: str,
        cap: float,
        build_deadline: float,
        source: Path | None = None,
        *,
        scrub: bool = False,
    ) -> str:
        """Runs a Nix command for at most ``cap`` seconds and the time the build has left,
        streaming its log into ours, and returns its stdout. Its error, for clients, names
        no server path (Nix's evaluation errors quote ``at /srv/pkgs/default.nix:1:52``);
        with ``scrub`` (a flake's evaluation), no host path and no hash at all."""
        started = time.monotonic()
        left = build_deadline - started
        if left <= 0:
            raise BuildTimedOut(f"{what} could not start: the build ran out of time", "")
        deadline = min(cap, left)
        tail: deque[str] = deque(maxlen=LOG_TAIL)
        stdout: list[str] = []
        with subprocess.Popen(
            # Should this process die, even by SIGKILL, the kernel sends Nix SIGTERM, and Nix
            # stops its builders: no build outlives the server that wanted it.
            ["setpriv", "--pdeathsig", "TERM", "--", *cmd],
            # NIX_PATH would widen what a restricted evaluation may read.
            env={k: v for k, v in os.environ.items() if k != "NIX_PATH"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        ) as proc:
            out, err = proc.stdout, proc.stderr
            assert out is not None and err is not None
            # stdout is small (JSON or paths): read it aside so that stderr streams here.
            reader = threading.Thread(target=lambda: stdout.append(out.read()))
            # No timer without a deadline: Timer(inf) fails in its thread (time_t overflow).
            killer = threading.Timer(deadline, _stop, (proc,))
            reader.start()
            if math.isfinite(deadline):
                killer.start()
            try:
                for line in err:
                    if line.strip():
                        tail.append(line.rstrip())
                        log.info("nix: %s", tail[-1])
                code = proc.wait()
            finally:
                killer.cancel()
                reader.join()
        elapsed = time.monotonic() - started
        if code != 0:
            private = {**self.private, **({source: PACKAGE_SET} if source else {})}
            shown = redact(tail, private)
            if scrub:
                shown = flakes.scrub(shown)
            raise _classify(what, code, elapsed >= deadline, deadline, shown, left <= cap)
        log.debug("%s took %.2fs", what, elapsed)
        return "".join(stdout)


def redact(lines: Iterable[str], private: Mapping[Path, str]) -> list[str]:
    """The lines with each private directory, as given or resolved, replaced by its token;
    the most specific first (a checkout inside the storage is the package set)."""
    spelled = {str(way): token for path, token in private.items()
               for way in (path, path.resolve()) if len(str(way)) > 1}  # fmt: skip
    if not spelled:
        return list(lines)
    # A whole path only: /srv/pkgs is not /srv/pkgs2.
    ways = "|".join(re.escape(p) for p in sorted(spelled, key=len, reverse=True))
    pattern = re.compile(f"(?:{ways})" + r"(?![\w.-])")
    return [pattern.sub(lambda m: spelled[m.group()], line) for line in lines]


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stops a Nix command past its deadline. SIGTERM first: Nix then kills its builders,
    which run in sessions of their own that SIGKILL on Nix's group would leave running."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


_ERROR_RE = re.compile(r"^error:\s*(.*)$")
# Nix's words for trouble outside the package set (2.8 to 2.26): substituter downloads,
# the disk, memory, builders killed from outside (the OOM killer sends SIGKILL), and the
# network under a flake's git input.
_TRANSIENT_RE = re.compile(
    r"unable to download|cannot download|error: download of|does not exist in binary cache"
    r"|No space left on device|Cannot allocate memory|out of memory|std::bad_alloc"
    r"|due to signal 9\b|killed by signal 9\b"
    # A flake's input fetched by git over the network (2.8 runs git; 2.26 libgit2 too).
    r"|program 'git' failed|Could not resolve host|Failed to connect|Connection timed out"
    r"|Temporary failure in name resolution|failed to resolve address",
    re.IGNORECASE,
)


def _classify(
    what: str,
    code: int,
    past_deadline: bool,
    deadline: float,
    tail: list[str],
    builds: bool = False,
) -> Exception:
    """``builds`` says the deadline was the build's (NIXERY_BUILD_DEADLINE), not the step's."""
    log_tail = "\n".join(tail)
    if past_deadline:
        whose = "the time the build had left (NIXERY_BUILD_DEADLINE)" if builds else "its limit"
        return BuildTimedOut(f"{what} took longer than {deadline:.0f}s, {whose}", log_tail)
    if code < 0:
        return BuildInterrupted(f"{what}: Nix was killed by signal {-code}", {"log": log_tail})
    message = _error_message(tail)
    if "timed out after" in message:  # Nix killed a builder past NIX_TIMEOUT
        return BuildTimedOut(message, log_tail)
    if any(_TRANSIENT_RE.search(line) for line in _plain(tail) if _ERROR_RE.match(line)):
        return BuildInterrupted(f"{what} failed: {message}", {"log": log_tail})
    return BuildFailed(f"{what} failed: {message}", log_tail)


def _plain(lines: Iterable[str]) -> list[str]:
    """Nix's lines without ANSI colours or indentation."""
    return [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in lines]


def _error_message(lines: Iterable[str]) -> str:
    """The first ``error:`` line of Nix's output, without ANSI colours. Since Nix 2.20 an
    evaluation error is a bare ``error:``, its trace, and the error itself last, on an
    ``error:`` line of its own: that one is taken."""
    plain = _plain(lines)
    found = [(i, m.group(1)) for i, line in enumerate(plain) if (m := _ERROR_RE.match(line))]
    if not found:
        return plain[-1][:1000] if plain else "no output"
    at, message = found[0]
    if not message:
        at, message = next(((i, said) for i, said in reversed(found) if said), (at, message))
    return " ".join(x for x in [message, *plain[at + 1 : at + 4]] if x)[:1000]
