# One task per build start. The builder runs one build per instance, so the queue dispatches
# at most as many at once as there are builders; more would wait in Cloud Run's queue.

# The queue's backoff, which the builder also gets: a build it gives back is held (no pull
# enqueues it again) until the queue's next retry is due.
locals {
  tasks_min_backoff   = 10
  tasks_max_backoff   = 300
  tasks_max_doublings = 4
  tasks_backoff_env = {
    NIXERY_TASKS_MIN_BACKOFF   = tostring(local.tasks_min_backoff)
    NIXERY_TASKS_MAX_BACKOFF   = tostring(local.tasks_max_backoff)
    NIXERY_TASKS_MAX_DOUBLINGS = tostring(local.tasks_max_doublings)
  }
}

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
    min_backoff        = "${local.tasks_min_backoff}s"
    max_backoff        = "${local.tasks_max_backoff}s"
    max_doublings      = local.tasks_max_doublings
  }

  stackdriver_logging_config {
    sampling_ratio = 1.0
  }

  depends_on = [google_project_service.apis]
}
