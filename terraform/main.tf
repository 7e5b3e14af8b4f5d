# The project's APIs and the repository the builder image is pushed to.

locals {
  apis = [
    "artifactregistry.googleapis.com",
    "billingbudgets.googleapis.com",
    "cloudbuild.googleapis.com", # 2nd-gen functions are built by Cloud Build
    "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com",
    "cloudtasks.googleapis.com",
    "compute.googleapis.com", # the CDN of a public mirror
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com", # signBlob, for signed URLs
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ]
  builder_image = var.builder_image != "" ? var.builder_image : "${var.region}-docker.pkg.dev/${var.project}/${google_artifact_registry_repository.images.repository_id}/builder:latest"
}

data "google_project" "this" {
  project_id = var.project
}

resource "google_project_service" "apis" {
  for_each           = toset(local.apis)
  project            = var.project
  service            = each.value
  disable_on_destroy = false # other things in the project may use them
}

resource "google_artifact_registry_repository" "images" {
  # checkov:skip=CKV_GCP_84:The image is built from public sources (Debian, this repository); Google-managed encryption suffices and a KMS key would add cost and key management.
  project       = var.project
  location      = var.region
  repository_id = var.name
  format        = "DOCKER"
  description   = "Nixery's builder image, pushed by cloudbuild.yaml."
  labels        = var.labels

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 5
    }
  }
  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      older_than = "2592000s"
    }
  }

  depends_on = [google_project_service.apis]
}
