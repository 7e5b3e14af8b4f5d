# One task per build start. The builder runs one build per instance, so the queue dispatches
# at most as many at once as there are builders; more would wait in Cloud Run's queue.

resource "google_cloud_tasks_queue" "builds" {
  project  = var.project
  name     = "${var.name}-builds"
  location = var.region

  rate_limits {
    max_concurrent_dispatches = var.builder_max_instances
    max_dispatches_per_second = var.tasks_dispatches_per_second
  }

  # The builder answers 5xx only for transient trouble (a download, a killed Nix, storage);
  # a failure of the image itself is recorded and answered 2xx. A build is also retried by
  # the next pull, so an hour of retries is enough.
  retry_config {
    max_attempts       = var.tasks_max_attempts
    max_retry_duration = "3600s"
    min_backoff        = "10s"
    max_backoff        = "300s"
    max_doublings      = 4
  }

  stackdriver_logging_config {
    sampling_ratio = 1.0
  }

  depends_on = [google_project_service.apis]
}
