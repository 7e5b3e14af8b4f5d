# What an operator sets. Only `project` is required; terraform.tfvars.example shows a full file.

variable "project" {
  type        = string
  description = "The Google Cloud project to deploy into (its ID, not its number)."
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project))
    error_message = "project must be a project ID: 6-30 lowercase letters, digits and hyphens."
  }
}

variable "region" {
  type        = string
  description = "Region of every regional resource: the function, the builder, the queue, the bucket, the Firestore database and the image repository."
  default     = "us-central1"
  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must be a Google Cloud region such as us-central1."
  }
}

variable "name" {
  type        = string
  description = "Prefix of every resource's name, so that several deployments can share a project."
  default     = "nixery"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,18}[a-z0-9]$", var.name))
    error_message = "name must be 4-20 lowercase letters, digits and hyphens, starting with a letter (a Firestore database ID has at least 4)."
  }
}

variable "builder_image" {
  type        = string
  description = "The builder image (functions/builder/Dockerfile). Empty: the `builder:latest` tag of this deployment's Artifact Registry repository, where cloudbuild.yaml pushes it. cloudbuild.yaml passes the pushed digest, so every build redeploys exactly what it built."
  default     = ""
  validation {
    condition     = var.builder_image == "" || can(regex("^[a-z0-9.-]+(:[0-9]+)?/[^ ]+$", var.builder_image))
    error_message = "builder_image must be empty or an image reference such as us-central1-docker.pkg.dev/P/nixery/builder@sha256:..."
  }
}

variable "function_archive" {
  type        = string
  description = "Path of the registry function's source archive, as scripts/package-function.py writes it."
  default     = "../dist/registry-function.zip"
  validation {
    condition     = endswith(var.function_archive, ".zip")
    error_message = "function_archive must be the .zip that scripts/package-function.py writes."
  }
}

variable "nixery_channel" {
  type        = string
  description = "NIXERY_CHANNEL: the nixpkgs channel images are built from, unless nixery_pkgs_repo is set."
  default     = "nixos-unstable"
  validation {
    condition     = can(regex("^(nixos|nixpkgs)-[a-z0-9.-]+$", var.nixery_channel))
    error_message = "nixery_channel must be a channel name such as nixos-unstable or nixos-24.11."
  }
}

variable "nixery_pkgs_repo" {
  type        = string
  description = "NIXERY_PKGS_REPO: a git repository of a package set to build from instead of the channel (every branch and tag of it is trusted: see docs/security.md). Empty: the channel."
  default     = ""
  validation {
    condition     = var.nixery_pkgs_repo == "" || can(regex("^(https|ssh)://", var.nixery_pkgs_repo))
    error_message = "nixery_pkgs_repo must be empty or an https:// or ssh:// git URL."
  }
}

variable "build_deadline" {
  type        = number
  description = "NIXERY_BUILD_DEADLINE: seconds one build may take. Also the builder's request timeout and the tasks' dispatch deadline, whose maximum (1800) it may not exceed."
  default     = 1800
  validation {
    condition     = var.build_deadline >= 60 && var.build_deadline <= 1800
    error_message = "build_deadline must be 60-1800 seconds (Cloud Tasks' longest dispatch deadline)."
  }
}

variable "build_wait" {
  type        = number
  description = "NIXERY_BUILD_WAIT: seconds a pull waits for a build before it is answered 503 with Retry-After (the build goes on). 240 keeps a minute's margin under containerd's 5-minute pull progress timeout (docs/clients.md, Waiting for a build)."
  default     = 240
  validation {
    condition     = var.build_wait >= 10 && var.build_wait <= 3540
    error_message = "build_wait must be 10-3540 seconds: the function's timeout (build_wait + 60) may not exceed 3600."
  }
}

variable "builder_cpu" {
  type        = number
  description = "vCPUs of a builder instance. Nix substitutes and unpacks in parallel and layers compress on every core; 8 GiB and more of memory needs at least 2 on Cloud Run."
  default     = 4
  validation {
    condition     = contains([2, 4, 6, 8], var.builder_cpu)
    error_message = "builder_cpu must be 2, 4, 6 or 8."
  }
}

variable "builder_memory_gib" {
  type        = number
  description = "GiB of memory of a builder instance. Cloud Run's disk is this memory: the Nix store is kept under half of it (NIXERY_STORE_LIMIT), the rest holds nixpkgs checkouts and the evaluation of nixpkgs (1-2 GB). See the platform settings in docs/deployment.md."
  default     = 8
  validation {
    condition     = var.builder_memory_gib >= 4 && var.builder_memory_gib <= 32
    error_message = "builder_memory_gib must be 4-32 (Cloud Run's maximum is 32 GiB)."
  }
}

variable "builder_max_instances" {
  type        = number
  description = "Builds that may run at once: each builder instance runs one, so this is also the queue's maximum concurrent dispatches."
  default     = 5
  validation {
    condition     = var.builder_max_instances >= 1 && var.builder_max_instances <= 100
    error_message = "builder_max_instances must be 1-100."
  }
}

variable "registry_max_instances" {
  type        = number
  description = "Registry function instances at most. Each answers registry_concurrency requests at once; most are cache hits answered in milliseconds."
  default     = 20
  validation {
    condition     = var.registry_max_instances >= 1 && var.registry_max_instances <= 1000
    error_message = "registry_max_instances must be 1-1000."
  }
}

variable "registry_concurrency" {
  type        = number
  description = "Requests one registry function instance serves at once; functions-framework gets as many threads (THREADS)."
  default     = 80
  validation {
    condition     = var.registry_concurrency >= 2 && var.registry_concurrency <= 1000
    error_message = "registry_concurrency must be 2-1000 (above 1 needs at least one vCPU, which the function has)."
  }
}

variable "public_access" {
  type        = bool
  description = "true: anyone may call the registry (a public registry, or one protected by registry_auth). false: only registry_invokers, by Google identity token (behind a proxy, IAP or for gcloud users); Docker cannot send those tokens itself."
  default     = true
}

variable "registry_invokers" {
  type        = list(string)
  description = "IAM members allowed to call the registry when public_access is false, e.g. [\"group:builders@example.com\"]."
  default     = []
  validation {
    condition     = alltrue([for m in var.registry_invokers : can(regex("^(user|group|serviceAccount|domain):", m))])
    error_message = "registry_invokers must be IAM members: user:, group:, serviceAccount: or domain:."
  }
}

variable "registry_auth" {
  type        = string
  description = "NIXERY_AUTH: \"\" (none), \"basic\" or \"token\". With either, the users and the token secret come from the Secret Manager secrets auth_users_secret and auth_secret_secret (docs/security.md: Private registries)."
  default     = ""
  validation {
    condition     = contains(["", "basic", "token"], var.registry_auth)
    error_message = "registry_auth must be \"\", \"basic\" or \"token\"."
  }
}

variable "auth_users_secret" {
  type        = string
  description = "Secret Manager secret (its ID in this project) holding NIXERY_AUTH_USERS, as `nixery hash-password` lines joined by commas. Used when registry_auth is set."
  default     = "nixery-auth-users"
  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,255}$", var.auth_users_secret))
    error_message = "auth_users_secret must be a secret ID."
  }
}

variable "auth_secret_secret" {
  type        = string
  description = "Secret Manager secret holding NIXERY_AUTH_SECRET (32 characters or more), with which every instance signs and checks tokens. Used when registry_auth is set."
  default     = "nixery-auth-secret"
  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,255}$", var.auth_secret_secret))
    error_message = "auth_secret_secret must be a secret ID."
  }
}

variable "public_url" {
  type        = string
  description = "NIXERY_PUBLIC_URL: the URL users reach the registry at, if not the function's own (a mapped domain), for the web pages' pull commands and the images' build-page annotation. Empty: the host each request names, and no annotation."
  default     = ""
  validation {
    condition     = var.public_url == "" || can(regex("^https://[^/?#\\s]+$", var.public_url))
    error_message = "public_url must be empty or https://HOST, without a path."
  }
}

variable "signing_kms_key" {
  type        = string
  description = "NIXERY_SIGNING_KMS_KEY: a Cloud KMS key version (purpose ASYMMETRIC_SIGN) the builder signs every image with, for `cosign verify` (docs/clients.md: What an image is made of). Empty: images are not signed."
  default     = ""
  validation {
    condition     = var.signing_kms_key == "" || can(regex("^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+/cryptoKeyVersions/[0-9]+$", var.signing_kms_key))
    error_message = "signing_kms_key must be empty or projects/P/locations/L/keyRings/R/cryptoKeys/K/cryptoKeyVersions/N."
  }
}

variable "public_mirror" {
  type        = bool
  description = "true: blobs are served from a public-read bucket behind Cloud CDN (an external HTTP(S) load balancer) and the registry redirects to plain URLs there, which the CDN caches; false: the bucket stays private and the registry redirects to short-lived signed URLs."
  default     = false
}

variable "cdn_domain" {
  type        = string
  description = "With public_mirror: a domain name whose DNS you point at the output cdn_address, for a Google-managed certificate and HTTPS. Empty: the CDN is reached over plain HTTP at its IP address (blobs are checked against their digests by every client)."
  default     = ""
  validation {
    condition     = var.cdn_domain == "" || can(regex("^([a-z0-9-]+\\.)+[a-z]{2,}$", var.cdn_domain))
    error_message = "cdn_domain must be empty or a domain name such as blobs.example.com."
  }
}

variable "client_builds" {
  type        = string
  description = "NIXERY_CLIENT_BUILDS: new builds one client address may start, as COUNT/SECONDS (e.g. 20/3600). Empty: no limit. A public mirror should set it."
  default     = ""
  validation {
    condition     = var.client_builds == "" || can(regex("^[0-9]+/[0-9]+$", var.client_builds))
    error_message = "client_builds must be empty or COUNT/SECONDS, e.g. 20/3600."
  }
}

variable "max_image_size" {
  type        = string
  description = "NIXERY_MAX_IMAGE_SIZE: the largest closure an image may hold, e.g. 4G. Empty: no limit."
  default     = "4G"
  validation {
    condition     = var.max_image_size == "" || can(regex("^[0-9]+[KMGT]?$", var.max_image_size))
    error_message = "max_image_size must be empty or a size such as 4G or 500M."
  }
}

variable "gc_schedule" {
  type        = string
  description = "When `nixery gc --apply` runs (cron, in gc_time_zone). Empty: never."
  default     = "17 3 * * *"
  validation {
    condition     = var.gc_schedule == "" || length(split(" ", var.gc_schedule)) == 5
    error_message = "gc_schedule must be empty or a five-field cron expression."
  }
}

variable "gc_time_zone" {
  type        = string
  description = "Time zone of gc_schedule (a tz database name)."
  default     = "Etc/UTC"
  validation {
    condition     = can(regex("^[A-Za-z_]+(/[A-Za-z0-9_+-]+)*$", var.gc_time_zone))
    error_message = "gc_time_zone must be a tz database name such as Etc/UTC or Europe/Paris."
  }
}

variable "gc_max_age_days" {
  type        = number
  description = "NIXERY_GC_MAX_AGE: images not pulled by tag for this many days are collected with their blobs (rebuilt on demand if asked for again)."
  default     = 30
  validation {
    condition     = var.gc_max_age_days >= 1 && var.gc_max_age_days <= 180
    error_message = "gc_max_age_days must be 1-180: Firestore's TTL policy deletes an image's record 180 days after its last pull anyway."
  }
}

variable "tasks_dispatches_per_second" {
  type        = number
  description = "Builds Cloud Tasks may start per second, at most."
  default     = 1
  validation {
    condition     = var.tasks_dispatches_per_second > 0 && var.tasks_dispatches_per_second <= 500
    error_message = "tasks_dispatches_per_second must be above 0 and at most 500."
  }
}

variable "tasks_max_attempts" {
  type        = number
  description = "Deliveries of one build task (Cloud Tasks deletes a task once both this many and an hour of retries passed). A builder answers 5xx only for transient trouble; a build given back 5 times in a row is recorded as failed (for NIXERY_FAILURE_TTL), as are recorded failures, answered 2xx and never retried."
  default     = 5
  validation {
    condition     = var.tasks_max_attempts >= 1 && var.tasks_max_attempts <= 100
    error_message = "tasks_max_attempts must be 1-100."
  }
}

variable "billing_account" {
  type        = string
  description = "Billing account ID (XXXXXX-XXXXXX-XXXXXX) for the budget. Empty: no budget is made. A budget alerts; it never stops spending."
  default     = ""
  validation {
    condition     = var.billing_account == "" || can(regex("^[0-9A-F]{6}-[0-9A-F]{6}-[0-9A-F]{6}$", var.billing_account))
    error_message = "billing_account must be empty or an ID such as 012345-6789AB-CDEF01."
  }
}

variable "budget_amount" {
  type        = number
  description = "Monthly budget, in the billing account's currency."
  default     = 50
  validation {
    condition     = var.budget_amount > 0
    error_message = "budget_amount must be positive."
  }
}

variable "budget_thresholds" {
  type        = list(number)
  description = "Fractions of budget_amount at which the billing account's admins are e-mailed (current spend)."
  default     = [0.5, 0.9, 1.0]
  validation {
    condition     = length(var.budget_thresholds) > 0 && alltrue([for t in var.budget_thresholds : t > 0 && t <= 10])
    error_message = "budget_thresholds must be fractions above 0 (at most 10)."
  }
}

variable "labels" {
  type        = map(string)
  description = "Labels put on every resource that takes them."
  default     = { app = "nixery" }
  validation {
    condition     = alltrue([for k, v in var.labels : can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))])
    error_message = "labels: keys and values must be lowercase letters, digits, _ and - (keys starting with a letter), at most 63 characters."
  }
}
