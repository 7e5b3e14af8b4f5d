"""Runs Google Cloud mode on this machine: the GCS, Firestore and Cloud Tasks emulators, the
builder service (gunicorn) and the registry function (functions-framework), wired together
as the tests wire them. Prints the registry's address; Ctrl-C stops everything.

    scripts/setup.sh --test && .venv/bin/python scripts/run-gcp-emulated.py
"""

from __future__ import annotations

import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tests.helpers.emulators import Emulators, GcpRegistry


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="nixery-gcp-"))
    emulators = Emulators(root / "emulators")
    registry = GcpRegistry(root / "services", emulators, NIX_TIMEOUT="600").start()
    print(f"registry function: {registry.url}  (logs in {root})", flush=True)
    print(
        f"try: skopeo inspect --tls-verify=false docker://{registry.host}/shell/hello", flush=True
    )
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        registry.stop()
        emulators.stop()


if __name__ == "__main__":
    main()
