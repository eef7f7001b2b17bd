# SOPHIE policies, conftest style: `deny` blocks a plan, `warn` shows on its card.
# `input` is the plan as Δ sees it before approval (see README, "Policies").
package main

import rego.v1

# Data migrations must back up first.
deny contains {"id": "migration-needs-backup", "msg": msg} if {
	some step in input.steps
	step.action == "db_migration"
	not step.inputs.backup == "true"
	msg := sprintf("Migration step '%s' does not back up first", [step.description])
}

# Anything that deploys should prove it works afterwards.
warn contains {"id": "deploy-without-smoke-test", "msg": "The plan deploys without a smoke test"} if {
	some step in input.steps
	step.action == "deploy"
	not smoke_tested
}

smoke_tested if {
	some step in input.steps
	step.action == "smoke_test"
}
