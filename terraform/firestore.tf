# Build records, manifests, the layer cache and per-client counters. A database of its own,
# so that the deployment neither needs nor touches the project's (default) one.

resource "google_firestore_database" "nixery" {
  project                 = var.project
  name                    = var.name
  location_id             = var.region
  type                    = "FIRESTORE_NATIVE"
  delete_protection_state = "DELETE_PROTECTION_DISABLED"
  deletion_policy         = "DELETE" # a cache of what the bucket holds: `terraform destroy` removes it
  depends_on              = [google_project_service.apis]
}

locals {
  collections = "nixery_" # NIXERY_FIRESTORE_PREFIX, the code's default
  # Where every role finds records and blobs.
  backend_env = {
    NIXERY_STORAGE_BACKEND    = "gcs"
    GOOGLE_CLOUD_PROJECT      = var.project
    GCS_BUCKET                = google_storage_bucket.blobs.name
    NIXERY_FIRESTORE_DATABASE = google_firestore_database.nixery.name
  }
  # TTL policies: records delete themselves once past `expires` (shared/nixery/gcp/firestore_state.py:
  # failures after a day, images half a year after their last pull; gcp/firestore_limiter.py: counters).
  ttl_fields = {
    builds  = "expires"
    clients = "expires"
  }
  # Large values nothing queries: not indexed (index entries cost writes and storage, and a
  # value over 1,500 bytes is indexed truncated anyway).
  unindexed_fields = {
    builds_job      = ["builds", "job"]
    builds_detail   = ["builds", "failure_detail"]
    builds_message  = ["builds", "failure_message"]
    builds_manifest = ["builds", "manifests"]
    manifests_body  = ["manifests", "body"]
    reports_report  = ["reports", "report"]     # a build's page, as JSON
    package_names   = ["package_sets", "names"] # up to 900 KB: the search's names
  }
}

resource "google_firestore_field" "ttl" {
  for_each   = local.ttl_fields
  project    = var.project
  database   = google_firestore_database.nixery.name
  collection = "${local.collections}${each.key}"
  field      = each.value
  ttl_config {}
  index_config {} # a TTL timestamp field is best not indexed (hot-spotting)
}

resource "google_firestore_field" "unindexed" {
  for_each   = local.unindexed_fields
  project    = var.project
  database   = google_firestore_database.nixery.name
  collection = "${local.collections}${each.value[0]}"
  field      = each.value[1]
  index_config {}
}
