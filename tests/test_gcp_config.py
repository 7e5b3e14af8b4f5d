import pytest

from nixery.config import ConfigError
from nixery.gcp.settings import builder_settings, registry_settings

REGISTRY = {
    "GOOGLE_CLOUD_PROJECT": "p",
    "GCS_BUCKET": "b",
    "NIXERY_TASKS_LOCATION": "europe-west1",
    "NIXERY_TASKS_QUEUE": "builds",
    "NIXERY_BUILDER_URL": "https://builder.example/",
    "NIXERY_TASKS_SERVICE_ACCOUNT": "tasks@p.iam.gserviceaccount.com",
}


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
    settings = builder_settings({"GOOGLE_CLOUD_PROJECT": "p", "GCS_BUCKET": "b"})
    assert settings.gcp.bucket == "b" and not hasattr(settings, "tasks_queue")


def test_each_role_reads_only_its_own_settings():
    registry = registry_settings(REGISTRY)
    assert not hasattr(registry, "build"), "the registry runs no Nix"
    builder = builder_settings({"GOOGLE_CLOUD_PROJECT": "p", "GCS_BUCKET": "b"})
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
    with pytest.raises(ConfigError, match=r"NIXERY_BUILD_WAIT.*NIXERY_FUNCTION_TIMEOUT"):
        registry_settings({**REGISTRY, "NIXERY_FUNCTION_TIMEOUT": "300"})  # the 600 s default
