# The provider is pinned to the version whose schema tests/deploy/test_terraform.py checks this
# configuration against (the JSON schema shipped in cdktf-cdktf-provider-google 16.12.1).
terraform {
  required_version = ">= 1.5"
  # State in a GCS bucket made beforehand: `terraform init -backend-config=bucket=NAME`.
  backend "gcs" {}
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "6.50.0"
    }
  }
}

provider "google" {
  project = var.project
  region  = var.region
}
