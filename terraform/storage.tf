# Blobs: content-addressed, immutable. Private, served by signed URLs; or, for a public
# mirror, public-read behind Cloud CDN, whose cached egress costs less than the bucket's and
# which can cache what signed URLs (a different URL per signature) never let it.

resource "google_storage_bucket" "blobs" {
  # checkov:skip=CKV_GCP_62:Every blob request passes the registry, which logs it; bucket access logs would double that at a cost per request.
  # checkov:skip=CKV_GCP_78:Blobs are content-addressed and never overwritten (writes require generation 0); versioning would only keep what nixery gc deletes.
  project                     = var.project
  name                        = "${var.project}-${var.name}-blobs"
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = var.public_mirror ? "inherited" : "enforced"
  force_destroy               = true # a cache: `terraform destroy` empties it
  labels                      = var.labels

  # A builder killed mid-upload leaves its staging object; a build takes at most
  # build_deadline, so a day-old one is abandoned.
  lifecycle_rule {
    condition {
      age            = 1
      matches_prefix = ["staging/"]
    }
    action {
      type = "Delete"
    }
  }
  # Resumable uploads a killed builder never finished.
  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  depends_on = [google_project_service.apis]
}

# Only in mirror mode: anyone may read an object they name (legacyObjectReader: get, not list,
# so the bucket's contents cannot be enumerated, even for a private registry's blobs).
resource "google_storage_bucket_iam_member" "public_read" {
  count  = var.public_mirror ? 1 : 0
  bucket = google_storage_bucket.blobs.name
  role   = "roles/storage.legacyObjectReader"
  member = "allUsers"
}

resource "google_compute_backend_bucket" "blobs" {
  count       = var.public_mirror ? 1 : 0
  project     = var.project
  name        = "${var.name}-blobs"
  bucket_name = google_storage_bucket.blobs.name
  enable_cdn  = true
  cdn_policy {
    cache_mode        = "CACHE_ALL_STATIC"
    default_ttl       = 86400
    max_ttl           = 31536000
    client_ttl        = 31536000
    serve_while_stale = 86400
  }
}

resource "google_compute_url_map" "blobs" {
  count           = var.public_mirror ? 1 : 0
  project         = var.project
  name            = "${var.name}-blobs"
  default_service = google_compute_backend_bucket.blobs[0].id
}

resource "google_compute_global_address" "blobs" {
  count   = var.public_mirror ? 1 : 0
  project = var.project
  name    = "${var.name}-blobs"
}

resource "google_compute_managed_ssl_certificate" "blobs" {
  count   = var.public_mirror && var.cdn_domain != "" ? 1 : 0
  project = var.project
  name    = "${var.name}-blobs"
  managed {
    domains = [var.cdn_domain]
  }
}

resource "google_compute_target_https_proxy" "blobs" {
  count            = var.public_mirror && var.cdn_domain != "" ? 1 : 0
  project          = var.project
  name             = "${var.name}-blobs"
  url_map          = google_compute_url_map.blobs[0].id
  ssl_certificates = [google_compute_managed_ssl_certificate.blobs[0].id]
}

resource "google_compute_target_http_proxy" "blobs" {
  count   = var.public_mirror && var.cdn_domain == "" ? 1 : 0
  project = var.project
  name    = "${var.name}-blobs"
  url_map = google_compute_url_map.blobs[0].id
}

resource "google_compute_global_forwarding_rule" "blobs" {
  count                 = var.public_mirror ? 1 : 0
  project               = var.project
  name                  = "${var.name}-blobs"
  ip_address            = google_compute_global_address.blobs[0].address
  load_balancing_scheme = "EXTERNAL_MANAGED"
  port_range            = var.cdn_domain != "" ? "443" : "80"
  target                = var.cdn_domain != "" ? google_compute_target_https_proxy.blobs[0].id : google_compute_target_http_proxy.blobs[0].id
}

locals {
  # What NIXERY_BLOB_URL is set to: the CDN's base URL in mirror mode, else empty (signed URLs).
  blob_url = !var.public_mirror ? "" : (
    var.cdn_domain != "" ? "https://${var.cdn_domain}" : "http://${google_compute_global_address.blobs[0].address}"
  )
}

# The registry function's source, uploaded under its hash so that a change redeploys it.
resource "google_storage_bucket" "sources" {
  # checkov:skip=CKV_GCP_62:Only Terraform and Cloud Functions' build read it.
  # checkov:skip=CKV_GCP_78:Archives are named by their hash and never overwritten.
  project                     = var.project
  name                        = "${var.project}-${var.name}-sources"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true
  labels                      = var.labels
  depends_on                  = [google_project_service.apis]
}

resource "google_storage_bucket_object" "function_archive" {
  bucket = google_storage_bucket.sources.name
  name   = "registry-${filesha256(var.function_archive)}.zip"
  source = var.function_archive
}
