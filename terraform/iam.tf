# Least privilege: each service account holds exactly what its role does, on the one resource
# it does it to where the role allows that.

resource "google_service_account" "registry" {
  project      = var.project
  account_id   = "${var.name}-registry"
  display_name = "Nixery registry function"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "builder" {
  project      = var.project
  account_id   = "${var.name}-builder"
  display_name = "Nixery builder service"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "tasks" {
  project      = var.project
  account_id   = "${var.name}-tasks"
  display_name = "Nixery build tasks (OIDC tokens for the builder)"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "collector" {
  project      = var.project
  account_id   = "${var.name}-gc"
  display_name = "Nixery garbage collector (nixery gc --apply, on a schedule)"
  depends_on   = [google_project_service.apis]
}

locals {
  # The database itself and what is in it; not another database whose name starts alike.
  database_only = "resource.name == \"${google_firestore_database.nixery.id}\" || resource.name.startsWith(\"${google_firestore_database.nixery.id}/\")"
}

# --- registry: reads records, enqueues builds, reads and signs blob URLs ---------------------

resource "google_project_iam_member" "registry_firestore" {
  project = var.project
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.registry.email}"
  condition {
    title      = "nixery database only"
    expression = local.database_only
  }
}

resource "google_cloud_tasks_queue_iam_member" "registry_enqueues" {
  project  = var.project
  location = var.region
  name     = google_cloud_tasks_queue.builds.name
  role     = "roles/cloudtasks.enqueuer"
  member   = "serviceAccount:${google_service_account.registry.email}"
}

# Tasks carry an OIDC token of the tasks account; creating them needs act-as on it.
resource "google_service_account_iam_member" "registry_acts_as_tasks" {
  service_account_id = google_service_account.tasks.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.registry.email}"
}

resource "google_storage_bucket_iam_member" "registry_reads_blobs" {
  bucket = google_storage_bucket.blobs.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.registry.email}"
}

# signBlob as itself: V4 signed URLs without a key file. A public mirror signs nothing.
resource "google_service_account_iam_member" "registry_signs" {
  count              = var.public_mirror ? 0 : 1
  service_account_id = google_service_account.registry.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${google_service_account.registry.email}"
}

resource "google_secret_manager_secret_iam_member" "registry_auth" {
  for_each  = local.auth_secrets
  project   = var.project
  secret_id = each.value
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.registry.email}"
}

# --- builder: writes blobs and records ------------------------------------------------------
# Creates objects but may not overwrite or delete a blob (that needs delete permission): a
# builder can add to the cache, never change what it serves. It reads blobs (the layer cache
# checks they exist) and deletes only its own staging objects once copied.

resource "google_storage_bucket_iam_member" "builder_writes_blobs" {
  bucket = google_storage_bucket.blobs.name
  role   = "roles/storage.objectCreator"
  member = "serviceAccount:${google_service_account.builder.email}"
}

resource "google_storage_bucket_iam_member" "builder_reads_blobs" {
  bucket = google_storage_bucket.blobs.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.builder.email}"
}

resource "google_storage_bucket_iam_member" "builder_clears_staging" {
  bucket = google_storage_bucket.blobs.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.builder.email}"
  condition {
    title      = "staging objects only"
    expression = "resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.blobs.name}/objects/staging/\")"
  }
}

resource "google_project_iam_member" "builder_firestore" {
  project = var.project
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.builder.email}"
  condition {
    title      = "nixery database only"
    expression = local.database_only
  }
}

# --- tasks: invokes the builder, nothing else (see builder.tf) -----------------------------

# --- collector: lists and deletes blobs and records; its schedule runs it -------------------

resource "google_storage_bucket_iam_member" "collector_blobs" {
  bucket = google_storage_bucket.blobs.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.collector.email}"
}

resource "google_project_iam_member" "collector_firestore" {
  project = var.project
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.collector.email}"
  condition {
    title      = "nixery database only"
    expression = local.database_only
  }
}
