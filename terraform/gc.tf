# `nixery gc --apply` on a schedule: images not pulled for gc_max_age_days go, with the blobs,
# manifests and layer-cache rows only they used (docs/security.md: Nothing grows forever). It
# runs as a Cloud Run job from the builder image, which has the nixery command.

resource "google_cloud_run_v2_job" "gc" {
  count               = var.gc_schedule != "" ? 1 : 0
  project             = var.project
  name                = "${var.name}-gc"
  location            = var.region
  deletion_protection = false
  labels              = var.labels

  template {
    task_count = 1
    template {
      service_account = google_service_account.collector.email
      timeout         = "3600s"
      max_retries     = 1
      containers {
        image   = local.builder_image
        command = ["/venv/bin/nixery"]
        args    = ["gc", "--apply"]
        resources {
          limits = {
            cpu    = "1"
            memory = "1Gi"
          }
        }
        dynamic "env" {
          for_each = local.backend_env
          content {
            name  = env.key
            value = env.value
          }
        }
        env {
          name  = "NIXERY_GC_MAX_AGE"
          value = tostring(var.gc_max_age_days)
        }
        # Blobs younger than twice this are kept: a build under way keeps what it wrote.
        env {
          name  = "NIXERY_BUILD_DEADLINE"
          value = tostring(var.build_deadline)
        }
      }
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_cloud_run_v2_job_iam_member" "gc_runner" {
  count    = var.gc_schedule != "" ? 1 : 0
  project  = var.project
  location = var.region
  name     = google_cloud_run_v2_job.gc[0].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.collector.email}"
}

resource "google_cloud_scheduler_job" "gc" {
  count     = var.gc_schedule != "" ? 1 : 0
  project   = var.project
  region    = var.region
  name      = "${var.name}-gc"
  schedule  = var.gc_schedule
  time_zone = var.gc_time_zone

  http_target {
    http_method = "POST"
    uri         = "https://run.googleapis.com/v2/${google_cloud_run_v2_job.gc[0].id}:run"
    oauth_token {
      service_account_email = google_service_account.collector.email
    }
  }

  depends_on = [google_cloud_run_v2_job_iam_member.gc_runner]
}
