import pytest

from nixery.config import ConfigError
from nixery.gcp.settings import load_gcp

REGISTRY = {
    "GOOGLE_CLOUD_PROJECT": "p",
    "NIXERY_TASKS_LOCATION": "europe-west1",
    "NIXERY_TASKS_QUEUE": "builds",
    "NIXERY_BUILDER_URL": "https://builder.example/",
}


def test_registry_configuration():
    cfg = load_gcp("registry", REGISTRY)
    assert cfg.tasks_queue == "projects/p/locations/europe-west1/queues/builds"
    assert cfg.url_ttl == 300 and cfg.lease == 60


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ("GOOGLE_CLOUD_PROJECT", "GCP_PROJECT"),
        ("NIXERY_TASKS_QUEUE", "NIXERY_TASKS_QUEUE"),
        ("NIXERY_BUILDER_URL", "NIXERY_BUILDER_URL"),
    ],
)
def test_missing_settings_are_named(missing, named):
    env = {k: v for k, v in REGISTRY.items() if k != missing}
    with pytest.raises(ConfigError, match=named):
        load_gcp("registry", env)


def test_the_builder_needs_no_queue():
    assert load_gcp("builder", {"GOOGLE_CLOUD_PROJECT": "p"}).tasks_queue is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("NIXERY_URL_TTL", "0"), ("NIXERY_URL_TTL", "soon"), ("NIXERY_LEASE_TTL", "1"),
     ("NIXERY_BUILDER_URL", "builder")],
)  # fmt: skip
def test_bad_values_are_named(name, value):
    with pytest.raises(ConfigError, match=name):
        load_gcp("registry", {**REGISTRY, name: value})
