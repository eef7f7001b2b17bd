"""Φ Navigator: read a directive and fix its intent, target and artifacts.

The reading is deterministic and bounded by the constitution: the directive's
words can pick a repo or environment only from those the constitution lists,
so neither a person nor a model can steer a plan outside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from roles.constitution import Constitution, RepoRule
from roles.plan import Intent, RuleHit
from roles.untrusted import clean_text, strip_slack_markup

# Ordered: the first intent whose pattern matches wins.
_INTENT_PATTERNS: list[tuple[Intent, str]] = [
    (Intent.ROLLBACK, r"\b(roll ?back|revert|undo)\b"),
    (Intent.MIGRATION, r"\b(migrat\w*|schema change|alter table)\b"),
    (Intent.DEPENDENCY, r"\b(upgrade|bump|update)\b.*\b(dependenc\w*|package|library|version)\b"),
    (Intent.CONFIG, r"\b(config\w*|setting|env(ironment)? var\w*|feature flag|toggle)\b"),
    (Intent.FIX, r"\b(fix|bug|patch|hotfix|repair)\b"),
    (Intent.FEATURE, r"\b(add|implement|create|introduce|enable|support|build out)\b"),
    (Intent.BUILD, r"\b(build|package|artifact|release build|compile)\b"),
    (Intent.DEPLOY, r"\b(deploy|ship|release|promote|push to)\b"),
]

_ARTIFACT_PATTERNS: list[tuple[str, str]] = [
    ("deb", r"\.deb\b|\bdebian package\b"),
    ("rpm", r"\.rpm\b"),
    ("dmg", r"\.dmg\b|\bmac ?os (app|installer)\b"),
    ("app", r"\.app\b"),
    ("exe", r"\.exe\b|\bwindows installer\b"),
    ("msi", r"\.msi\b"),
    ("docker", r"\bdocker\b|\bcontainer( image)?\b|\boci image\b"),
    ("wheel", r"\.whl\b|\bwheel\b"),
    ("tar", r"\.tar(\.gz)?\b|\btarball\b"),
]

_ENV_ALIASES = {
    "production": ["prod", "production", "live"],
    "staging": ["staging", "stage", "stg", "preprod", "pre-prod"],
    "development": ["dev", "development"],
}


@dataclass(frozen=True)
class Reading:
    """What Φ understood; problems are reasons the directive cannot be planned as asked."""

    text: str
    intent: Intent
    environment: str
    repo: RepoRule
    ref: str
    artifacts: list[str]
    component: str
    explicit_environment: bool
    intent_matched: bool = True
    explicit_repo: bool = False
    problems: list[RuleHit] = field(default_factory=list)


def _words_for_env(name: str, aliases: list[str]) -> list[str]:
    return sorted({name, *aliases, *_ENV_ALIASES.get(name, [])}, key=len, reverse=True)


def _find_environment(text: str, constitution: Constitution) -> tuple[str | None, list[str]]:
    """The environment the directive names, plus any names it used that are not allowed."""
    lowered = text.lower()
    found: list[tuple[int, str]] = []
    for name, rule in constitution.environments.items():
        for word in _words_for_env(name, rule.aliases):
            match = re.search(rf"\b{re.escape(word.lower())}\b", lowered)
            if match:
                found.append((match.start(), name))
                break
    unknown = [
        canonical
        for canonical, words in _ENV_ALIASES.items()
        if canonical not in constitution.environments
        and any(re.search(rf"\b{re.escape(w)}\b", lowered) for w in words)
    ]
    # "deploy to qa": a target named after a deploy verb that the constitution does not know.
    named = re.search(
        r"\b(?:deploy\w*|ship|release|promote|push|roll\w* out)\b(?:\s+\S+){0,3}?\s+"
        r"(?:to|into|on)\s+(?:the\s+)?([a-z][a-z0-9_-]*)",
        lowered,
    )
    if named and not found:
        word = named.group(1)
        known = {
            w.lower()
            for n, r in constitution.environments.items()
            for w in _words_for_env(n, r.aliases)
        }
        repo_words = {
            w.lower() for r in constitution.repos for w in [r.name.split("/", 1)[1], *r.aliases]
        }
        if word not in known | repo_words | {"it", "them", "this", "that", "all", "every"}:
            unknown.append(word)
    if not found:
        return None, unknown
    # "deploy to staging" — the environment after "to/in/on" is the target.
    for pos, name in sorted(found):
        if re.search(r"\b(to|in|on|into)\s+(the\s+)?$", lowered[max(0, pos - 12) : pos]):
            return name, unknown
    return sorted(found)[0][1], unknown


def _other_environments(text: str, chosen: str, constitution: Constitution) -> list[str]:
    lowered = text.lower()
    return [
        name
        for name, rule in constitution.environments.items()
        if name != chosen
        and any(
            re.search(rf"\b{re.escape(w.lower())}\b", lowered)
            for w in _words_for_env(name, rule.aliases)
        )
    ]


_GITHUB_URL = re.compile(r"https?://(?:www\.)?github\.com/", re.I)
_URL = re.compile(r"\b(?:https?|ftp)://\S+", re.I)


def _find_repo(text: str, constitution: Constitution) -> tuple[RepoRule | None, list[str]]:
    # A GitHub link names its repo; any other URL names none.
    text = _URL.sub(" ", _GITHUB_URL.sub("", text))
    lowered = text.lower()
    for repo in constitution.repos:
        short = repo.name.split("/", 1)[1]
        for word in [repo.name, short, *repo.aliases]:
            if re.search(rf"(?<![\w/.-]){re.escape(word.lower())}(?![\w/-])", lowered):
                return repo, []
    named = re.findall(r"\b([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)\b", text)
    outside = [n for n in named if not n.lower().startswith(("http", "www")) and "." not in n[:1]]
    return None, outside


def _component(text: str) -> str:
    match = re.search(
        r"\b(?:to|in|for|on) (?:the )?([a-z][a-z0-9 _-]{2,60}?)(?: and | to |,|\.|$)", text, re.I
    )
    if match:
        return match.group(1).strip()
    return "the service"


def interpret(raw: str, constitution: Constitution) -> Reading:
    text = clean_text(strip_slack_markup(raw))
    lowered = text.lower()
    problems: list[RuleHit] = []

    matched = next((i for i, pat in _INTENT_PATTERNS if re.search(pat, lowered)), None)
    intent = matched or Intent.FEATURE

    repo, outside_repos = _find_repo(text, constitution)
    if repo is None:
        repo = constitution.main_repo()
        for name in outside_repos:
            problems.append(
                RuleHit(
                    id="target.repo-not-allowed",
                    message=f"Repository {name[:80]} is not in the constitution's allowed repos",
                    effect="deny",
                )
            )

    env, unknown_envs = _find_environment(text, constitution)
    explicit = env is not None
    for name in unknown_envs:
        problems.append(
            RuleHit(
                id="target.environment-unknown",
                message=f"Environment '{name}' is not defined in the constitution",
                effect="deny",
            )
        )
    if env is None:
        env = constitution.default_environment
    others = _other_environments(text, env, constitution)
    if others:
        problems.append(
            RuleHit(
                id="target.other-environments",
                message=f"The directive also names {', '.join(others)}; "
                f"this plan targets '{env}' only",
                effect="warn",
            )
        )
    if env not in repo.environments:
        problems.append(
            RuleHit(
                id="target.environment-not-allowed",
                message=f"{repo.name} may not be deployed to '{env}' under the constitution",
                effect="deny",
            )
        )

    artifacts = [name for name, pat in _ARTIFACT_PATTERNS if re.search(pat, lowered)]
    if not artifacts and intent not in (Intent.ROLLBACK, Intent.CONFIG):
        artifacts = list(repo.artifacts)

    return Reading(
        text=text,
        intent=intent,
        environment=env,
        repo=repo,
        ref=repo.default_ref,
        artifacts=artifacts,
        component=_component(text),
        explicit_environment=explicit,
        intent_matched=matched is not None,
        explicit_repo=not outside_repos and _find_repo(text, constitution)[0] is not None,
        problems=problems,
    )


def revise(directive: str, feedback: str, constitution: Constitution) -> Reading:
    """Φ for "request changes": the directive as before, amended by the feedback.

    The intent stays the directive's; an environment or repository named in the
    feedback replaces the old one (still bounded by the constitution); artifacts
    asked for in either are built.
    """
    before = interpret(directive, constitution)
    asked = interpret(feedback, constitution)
    repo = asked.repo if asked.explicit_repo else before.repo
    env = asked.environment if asked.explicit_environment else before.environment
    problems = [p for p in asked.problems if p.id != "target.environment-not-allowed"]
    problems += [p for p in before.problems if p.id != "target.environment-not-allowed"]
    if env not in repo.environments:
        problems.append(
            RuleHit(
                id="target.environment-not-allowed",
                message=f"{repo.name} may not be deployed to '{env}' under the constitution",
                effect="deny",
            )
        )
    artifacts = list(dict.fromkeys([*before.artifacts, *asked.artifacts]))
    text = clean_text(f"{before.text}\n\nRequested changes: {asked.text}")
    return replace(
        before,
        text=text,
        environment=env,
        repo=repo,
        ref=repo.default_ref,
        artifacts=artifacts,
        explicit_environment=before.explicit_environment or asked.explicit_environment,
        problems=problems,
    )
