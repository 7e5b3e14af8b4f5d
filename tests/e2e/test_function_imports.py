"""The registry function loads no part of the build pipeline, even once it has answered.

Run in a fresh interpreter, as functions-framework runs the function, against the emulators.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers.boundary import building_modules
from tests.helpers.emulators import service_account_key
from tests.helpers.registries import DEMO, REPO

pytestmark = pytest.mark.e2e


SCRIPT = """
import json, sys
import functions_framework
app = functions_framework.create_app(target="registry", source=sys.argv[1])
client = app.test_client()
digest = "sha256:" + "0" * 64
answers = [
    client.get("/v2/").status_code,
    client.get("/v2/shell/hello/tags/list").status_code,
    client.get(f"/v2/shell/hello/manifests/{digest}").status_code,
    client.get(f"/v2/shell/hello/blobs/{digest}").status_code,
]
print(json.dumps({"answers": answers, "modules": sorted(sys.modules)}))
"""


def test_the_registry_function_imports_no_build_pipeline(emulators, tmp_path):
    service_account_key(tmp_path / "key.json")
    env = {
        **os.environ,
        **emulators.env(),
        "NIXERY_PKGS_PATH": str(DEMO),
        "NIXERY_BUILDER_URL": "http://127.0.0.1:9/",
        "NIXERY_FIRESTORE_PREFIX": "imports_",
        "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "key.json"),
    }
    main = REPO / "functions" / "registry" / "main.py"
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(main)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["answers"] == [200, 200, 404, 404]
    modules = set(result["modules"])
    assert "nixery.gcp.registry_app" in modules, "the backends were loaded"
    loaded = building_modules(modules)
    assert not loaded, f"the function loaded {loaded}"
