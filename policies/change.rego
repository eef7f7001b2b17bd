# SOPHIE policies on a generated change (see README, "How a change is made").
# Δ evaluates every policy twice: on the plan before approval, and on the commit the
# implementer produced, with `input.change` added (files with path, previous_path,
# status, additions, deletions, patch and `added` lines; totals; the whole patch).
# These rules say nothing about a plan alone: `input.change` is absent then.
package main

import rego.v1

# Turning off TLS certificate checks is never a generated change.
deny contains {"id": "change-disables-tls-verification", "msg": msg} if {
	some file in input.change.files
	some line in file.added
	# lower() rather than (?i): regopy's regular expressions have no flags.
	regex.match(`\bverify\s*=\s*false\b|rejectunauthorized\s*:\s*false|insecureskipverify\s*:\s*true`, lower(line))
	msg := sprintf("%s turns off TLS certificate verification", [file.path])
}

# Lock files change only when the plan updates dependencies.
deny contains {"id": "lock-file-without-dependency-step", "msg": msg} if {
	some file in input.change.files
	parts := split(file.path, "/")
	parts[count(parts) - 1] in lock_files
	not updates_dependencies
	msg := sprintf("%s is a lock file, and the plan has no dependency_update step", [file.path])
}

lock_files := {
	"package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml",
	"poetry.lock", "uv.lock", "Pipfile.lock", "Cargo.lock", "go.sum",
	"Gemfile.lock", "composer.lock",
}

updates_dependencies if {
	some step in input.steps
	step.action == "dependency_update"
}

# A change that touches no test is worth a second look.
warn contains {"id": "change-without-tests", "msg": "The change adds or edits no test file"} if {
	count(input.change.files) > 0
	not touches_tests
}

touches_tests if {
	some file in input.change.files
	regex.match(`(^|/)(tests?|spec|__tests__)/|(^|/)test_[^/]*$|_test\.[a-z]+$|\.(test|spec)\.[a-z]+$`, file.path)
}
