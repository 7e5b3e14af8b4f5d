# What an operator needs next. Docker wants /v2/ at the root of the registry's host: the
# function's run.app URL has it there (its cloudfunctions.net URL puts the function's name
# first, and does not work), as does a domain mapped to it.

locals {
  registry_url  = google_cloudfunctions2_function.registry.service_config[0].uri
  registry_host = trimprefix(local.registry_url, "https://")
}

output "registry_url" {
  description = "The registry's URL: the front page, and /v2/ at its root."
  value       = local.registry_url
}

output "registry_host" {
  description = "The host to pull from."
  value       = local.registry_host
}

output "docker_pull" {
  description = "A first pull (the first build of an image takes a few minutes; later pulls are served from the cache)."
  value       = "docker pull ${local.registry_host}/shell/hello"
}

output "builder_url" {
  description = "The builder service (internal: only the tasks reach it)."
  value       = google_cloud_run_v2_service.builder.uri
}

output "bucket" {
  description = "GCS_BUCKET: the blobs' bucket."
  value       = google_storage_bucket.blobs.name
}

output "firestore_database" {
  description = "NIXERY_FIRESTORE_DATABASE: for `nixery gc` run by hand with NIXERY_STORAGE_BACKEND=gcs."
  value       = google_firestore_database.nixery.name
}

output "blob_url" {
  description = "NIXERY_BLOB_URL: where blobs are redirected to in mirror mode (empty: signed URLs)."
  value       = local.blob_url
}

output "cdn_address" {
  description = "With public_mirror: the CDN's IP address; point cdn_domain's DNS A record at it."
  value       = var.public_mirror ? google_compute_global_address.blobs[0].address : ""
}

output "builder_image" {
  description = "The builder image deployed."
  value       = local.builder_image
}

output "smoke_test" {
  description = "Pulls shell/hello and checks its digests (docs/deployment.md: Deploying)."
  value       = "scripts/smoke-deployed.sh ${local.registry_host}"
}
