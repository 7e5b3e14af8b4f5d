# A budget ALERTS: it e-mails the billing account's admins at each threshold. It never stops
# spending; to cap it, lower builder_max_instances and registry_max_instances, and set
# client_builds for a public mirror.

resource "google_billing_budget" "nixery" {
  count           = var.billing_account != "" ? 1 : 0
  billing_account = var.billing_account
  display_name    = "${var.name} (${var.project})"

  budget_filter {
    projects = ["projects/${data.google_project.this.number}"]
  }

  amount {
    specified_amount {
      units = tostring(var.budget_amount)
    }
  }

  dynamic "threshold_rules" {
    for_each = var.budget_thresholds
    content {
      threshold_percent = threshold_rules.value
      spend_basis       = "CURRENT_SPEND"
    }
  }
}
