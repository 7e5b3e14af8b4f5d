import pytest

from nixery.config import ARCHIVE_SHARE, BUILD_WAIT
from nixery.errors import ConfigError
from nixery.gcp.settings import MAX_DISPATCH_DEADLINE, builder_settings, registry_settings

REGISTRY = {
    "GOOGLE_CLOUD_PROJECT": "p",
    "GCS_BUCKET": "b",
    "NIXERY_TASKS_LOCATION": "europe-west1",
    "NIXERY_TASKS_QUEUE": "builds",
    "NIXERY_BUILDER_URL": "https://builder.example/",
    "NIXERY_TASKS_SERVICE_ACCOUNT": "tasks@p.iam.gserviceaccount.com",
}
BUILDER = {"GOOGLE_CLOUD_PROJECT": "p", "GCS_BUCKET": "b"}


def test_registry_configuration():
    settings = registry_settings(REGISTRY)
    assert settings.tasks_queue == "projects/p/locations/europe-west1/queues/builds"
    assert settings.url_ttl == 300 and settings.gcp.lease == 60


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ("GOOGLE_CLOUD_PROJECT", "GCP_PROJECT"),
        ("GCS_BUCKET", "GCS_BUCKET"),
        ("NIXERY_TASKS_SERVICE_ACCOUNT", "NIXERY_TASKS_SERVICE_ACCOUNT.*OIDC"),
        ("NIXERY_TASKS_QUEUE", "NIXERY_TASKS_QUEUE"),
        ("NIXERY_BUILDER_URL", "NIXERY_BUILDER_URL"),
    ],
)
def test_missing_settings_are_named(missing, named):
    env = {k: v for k, v in REGISTRY.items() if k != missing}
    with pytest.raises(ConfigError, match=named):
        registry_settings(env)


def test_the_builder_needs_no_queue():
    settings = builder_settings(BUILDER)
    assert settings.gcp.bucket == "b" and not hasattr(settings, "tasks_queue")


def test_each_role_reads_only_its_own_settings():
    registry = registry_settings(REGISTRY)
    assert not hasattr(registry, "build"), "the registry runs no Nix"
    builder = builder_settings(BUILDER)
    assert not hasattr(builder, "serve"), "the builder answers no manifest requests"


def test_a_filesystem_backend_is_refused():
    with pytest.raises(ConfigError, match="NIXERY_STORAGE_BACKEND"):
        registry_settings({**REGISTRY, "NIXERY_STORAGE_BACKEND": "filesystem"})


@pytest.mark.parametrize(
    ("name", "value"),
    [("NIXERY_URL_TTL", "0"), ("NIXERY_URL_TTL", "soon"), ("NIXERY_LEASE_TTL", "1"),
     ("NIXERY_BUILDER_URL", "builder")],
)  # fmt: skip
def test_bad_values_are_named(name, value):
    with pytest.raises(ConfigError, match=name):
        registry_settings({**REGISTRY, name: value})


def test_only_the_emulator_may_go_without_oidc_tokens():
    env = {k: v for k, v in REGISTRY.items() if k != "NIXERY_TASKS_SERVICE_ACCOUNT"}
    settings = registry_settings({**env, "NIXERY_TASKS_EMULATOR_HOST": "127.0.0.1:9"})
    assert settings.tasks_service_account is None


def test_the_build_wait_ends_before_the_functions_timeout():
    settings = registry_settings({**REGISTRY, "NIXERY_FUNCTION_TIMEOUT": "300",
                                  "NIXERY_BUILD_WAIT": "270"})  # fmt: skip
    assert settings.function_timeout == 300
    assert registry_settings(REGISTRY).serve.build_wait == BUILD_WAIT
    with pytest.raises(ConfigError, match=r"NIXERY_BUILD_WAIT.*NIXERY_FUNCTION_TIMEOUT"):
        registry_settings({**REGISTRY, "NIXERY_FUNCTION_TIMEOUT": str(BUILD_WAIT + 29)})


def test_one_deadline_sets_the_tasks_and_the_builders_limits():
    """NIXERY_BUILD_DEADLINE is the tasks' dispatch deadline (at most Cloud Tasks' 30
    minutes) and the builder's whole time for one build, of which Nix gets its share."""
    deadline = {"NIXERY_BUILD_DEADLINE": "900"}
    assert registry_settings({**REGISTRY, **deadline}).build_deadline == 900
    build = builder_settings({**BUILDER, **deadline}).build
    assert build.deadline == 900 and build.nix_budget == 900 * (1 - ARCHIVE_SHARE)
    assert registry_settings(REGISTRY).build_deadline == 1800 == MAX_DISPATCH_DEADLINE
    for settings in (registry_settings, builder_settings):
        with pytest.raises(ConfigError, match="NIXERY_BUILD_DEADLINE must be between 60 and 1800"):
            settings({**REGISTRY, "NIXERY_BUILD_DEADLINE": "1801"})


def test_a_nix_timeout_the_deadline_cannot_honour_is_refused():
    ok = builder_settings({**BUILDER, "NIXERY_BUILD_DEADLINE": "600", "NIX_TIMEOUT": "480"})
    assert ok.build.nix_timeout == 480
    with pytest.raises(ConfigError, match=r"NIX_TIMEOUT \(481 s\).*NIXERY_BUILD_DEADLINE"):
        builder_settings({**BUILDER, "NIXERY_BUILD_DEADLINE": "600", "NIX_TIMEOUT": "481"})


def test_a_lease_as_long_as_the_build_is_refused():
    with pytest.raises(ConfigError, match=r"NIXERY_LEASE_TTL.*half of NIXERY_BUILD_DEADLINE"):
        builder_settings({**BUILDER, "NIXERY_BUILD_DEADLINE": "120", "NIXERY_LEASE_TTL": "60"})


def test_the_pickup_wait_is_not_the_lease():
    settings = registry_settings({**REGISTRY, "NIXERY_PICKUP_WAIT": "900"})
    assert settings.pickup == 900 and settings.gcp.lease == 60
    assert registry_settings(REGISTRY).pickup == 300


def test_the_platforms_own_timeout_wins():
    """The functions runtime passes its request timeout as CLOUD_RUN_TIMEOUT_SECONDS."""
    env = {**REGISTRY, "CLOUD_RUN_TIMEOUT_SECONDS": "300", "NIXERY_FUNCTION_TIMEOUT": "3600"}
    assert registry_settings(env).function_timeout == 300
    with pytest.raises(ConfigError, match=r"NIXERY_BUILD_WAIT \(280 s\).*CLOUD_RUN_TIMEOUT"):
        registry_settings({**env, "NIXERY_BUILD_WAIT": "280"})


def test_a_kms_signing_key_is_a_key_version_and_excludes_a_key_file():
    version = "projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1"
    assert builder_settings(BUILDER).kms_key is None
    assert builder_settings({**BUILDER, "NIXERY_SIGNING_KMS_KEY": version}).kms_key == version
    with pytest.raises(ConfigError, match="NIXERY_SIGNING_KMS_KEY"):
        builder_settings({**BUILDER, "NIXERY_SIGNING_KMS_KEY": "projects/p/keyRings/r"})
    both = {"NIXERY_SIGNING_KMS_KEY": version, "NIXERY_SIGNING_KEY": "/key.pem"}
    with pytest.raises(ConfigError, match="one of"):
        builder_settings({**BUILDER, **both})


def test_platforms_default_to_one_and_must_be_known():
    from nixery.request import AMD64, ARM64

    assert registry_settings(REGISTRY).serve.platforms == (AMD64,)
    both = {**REGISTRY, "NIXERY_PLATFORMS": "aarch64-linux, x86_64-linux"}
    assert registry_settings(both).serve.platforms == (ARM64, AMD64), "the default first"
    for bad in ("mips-linux", "x86_64-linux,arm64", " "):
        with pytest.raises(ConfigError, match="NIXERY_PLATFORMS"):
            registry_settings({**REGISTRY, "NIXERY_PLATFORMS": bad})
