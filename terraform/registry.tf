# The registry: a 2nd-gen function answering the protocol from Firestore and the bucket.

locals {
  # The function's request timeout: the build wait plus a minute, so that a slow build gets a
  # 503 with Retry-After before the platform cuts the request (the code wants 30 s or more).
  registry_timeout = var.build_wait + 60
  # What only the registry reads, besides local.backend_env.
  registry_env = {
    NIXERY_TASKS_LOCATION        = var.region
    NIXERY_TASKS_QUEUE           = google_cloud_tasks_queue.builds.name
    NIXERY_BUILDER_URL           = google_cloud_run_v2_service.builder.uri
    NIXERY_TASKS_SERVICE_ACCOUNT = google_service_account.tasks.email
    NIXERY_CHANNEL               = var.nixery_pkgs_repo == "" ? var.nixery_channel : ""
    NIXERY_PKGS_REPO             = var.nixery_pkgs_repo
    NIXERY_BUILD_WAIT            = tostring(var.build_wait)
    NIXERY_BUILD_DEADLINE        = tostring(var.build_deadline)
    NIXERY_BLOB_URL              = local.blob_url
    NIXERY_CLIENT_BUILDS         = var.client_builds
    NIXERY_AUTH                  = var.registry_auth
    NIXERY_PUBLIC_URL            = var.public_url
    THREADS                      = tostring(var.registry_concurrency) # functions-framework's gunicorn
  }
  # Secrets, only for a private registry; their values never pass through Terraform.
  auth_secrets = var.registry_auth == "" ? {} : {
    NIXERY_AUTH_USERS  = var.auth_users_secret
    NIXERY_AUTH_SECRET = var.auth_secret_secret
  }
}

resource "google_cloudfunctions2_function" "registry" {
  # checkov:skip=CKV_GCP_124:A registry is pulled from by clients anywhere; who may call it is decided by public_access (IAM) and registry_auth, not by ingress.
  project     = var.project
  name        = "${var.name}-registry"
  location    = var.region
  description = "Nixery: a container registry that builds images with Nix on demand."
  labels      = var.labels

  build_config {
    runtime     = "python311" # the project's Python (shared/pyproject.toml, ruff.toml)
    entry_point = "registry"
    source {
      storage_source {
        bucket = google_storage_bucket.sources.name
        object = google_storage_bucket_object.function_archive.name
      }
    }
  }

  service_config {
    service_account_email            = google_service_account.registry.email
    available_memory                 = "512Mi"
    available_cpu                    = "1"
    timeout_seconds                  = local.registry_timeout
    max_instance_request_concurrency = var.registry_concurrency
    min_instance_count               = 0
    max_instance_count               = var.registry_max_instances
    ingress_settings                 = "ALLOW_ALL"
    all_traffic_on_latest_revision   = true

    environment_variables = merge(local.backend_env, local.registry_env)

    dynamic "secret_environment_variables" {
      for_each = local.auth_secrets
      content {
        key        = secret_environment_variables.key
        project_id = var.project
        secret     = secret_environment_variables.value
        version    = "latest"
      }
    }
  }

  depends_on = [google_project_service.apis, google_secret_manager_secret_iam_member.registry_auth]
}

# Who may call it: everyone, or the listed members. Cloud Functions' 2nd gen is a Cloud Run
# service underneath, whose invoker role is what counts.
resource "google_cloud_run_v2_service_iam_member" "registry_invoker" {
  for_each = toset(var.public_access ? ["allUsers"] : var.registry_invokers)
  project  = var.project
  location = var.region
  name     = google_cloudfunctions2_function.registry.service_config[0].service
  role     = "roles/run.invoker"
  member   = each.value
}
