# The builder: Nix, layering, uploads. One build per instance (the store's collection and the
# build lease assume it), reached only by Cloud Tasks with the tasks account's OIDC token.

resource "google_cloud_run_v2_service" "builder" {
  project             = var.project
  name                = "${var.name}-builder"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY" # Cloud Tasks counts as internal
  deletion_protection = false
  labels              = var.labels

  template {
    service_account                  = google_service_account.builder.email
    execution_environment            = "EXECUTION_ENVIRONMENT_GEN2" # a full kernel for Nix
    max_instance_request_concurrency = 1
    timeout                          = "${var.build_deadline}s"

    scaling {
      min_instance_count = 0
      max_instance_count = var.builder_max_instances
    }

    containers {
      image = local.builder_image
      resources {
        limits = {
          cpu    = tostring(var.builder_cpu)
          memory = "${var.builder_memory_gib}Gi"
        }
        cpu_idle          = true # billed only while a build runs
        startup_cpu_boost = true
      }
      dynamic "env" {
        for_each = local.backend_env
        content {
          name  = env.key
          value = env.value
        }
      }
      dynamic "env" { # the queue's backoff, which a build given back is held for
        for_each = local.tasks_backoff_env
        content {
          name  = env.key
          value = env.value
        }
      }
      env {
        name  = "NIXERY_CHANNEL"
        value = var.nixery_pkgs_repo == "" ? var.nixery_channel : ""
      }
      env {
        name  = "NIXERY_PKGS_REPO"
        value = var.nixery_pkgs_repo
      }
      env {
        name  = "NIXERY_BUILD_DEADLINE"
        value = tostring(var.build_deadline)
      }
      # The store lives on the in-memory disk: half the memory, the rest for checkouts,
      # evaluation and the Python side.
      env {
        name  = "NIXERY_STORE_LIMIT"
        value = "${floor(var.builder_memory_gib / 2)}G"
      }
      env {
        name  = "NIXERY_MAX_IMAGE_SIZE"
        value = var.max_image_size
      }
      env {
        name  = "NIXERY_SIGNING_KMS_KEY"
        value = var.signing_kms_key
      }
      env {
        name  = "NIXERY_PUBLIC_URL" # the images' build-page annotation
        value = var.public_url
      }
      startup_probe {
        http_get {
          path = "/healthz"
        }
      }
    }
  }

  depends_on = [google_project_service.apis]
}

# The only invoker: the account whose OIDC token the tasks carry.
resource "google_cloud_run_v2_service_iam_member" "builder_invoker" {
  project  = var.project
  location = var.region
  name     = google_cloud_run_v2_service.builder.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.tasks.email}"
}

# Signing, when a key is given: asymmetricSign on that key, nothing else of KMS.
resource "google_kms_crypto_key_iam_member" "builder_signs" {
  count         = var.signing_kms_key != "" ? 1 : 0
  crypto_key_id = regex("^(.*)/cryptoKeyVersions/[0-9]+$", var.signing_kms_key)[0]
  role          = "roles/cloudkms.signer"
  member        = "serviceAccount:${google_service_account.builder.email}"
}
