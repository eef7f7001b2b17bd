"""Φ Navigator: read a directive and fix its intent, target and artifacts.

The reading is deterministic and bounded by the constitution: the directive's
words can pick a repo or environment only from those the constitution lists,
so neither a person nor a model can steer a plan outside it.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import dataclass, field, replace
from typing import Literal

from roles.constitution import Constitution, RepoRule
from roles.plan import Intent, RuleHit
from roles.untrusted import MAX_DIRECTIVE_CHARS, clean_text, strip_slack_markup
from roles.what_runs import ref_allowed

# Ordered: the first intent whose pattern matches wins. There is no rollback intent
# here on purpose: "undo", "revert" or "rollback" in a directive is an ordinary change
# at the ordinary level; only the rollback command plans a rollback.
_INTENT_PATTERNS: list[tuple[Intent, str]] = [
    (Intent.MIGRATION, r"\b(migrat\w*|schema change|alter table)\b"),
    (Intent.DEPENDENCY, r"\b(upgrade|bump|update)\b.*\b(dependenc\w*|package|library|version)\b"),
    (Intent.CONFIG, r"\b(config\w*|setting|env(ironment)? var\w*|feature flag|toggle)\b"),
    (Intent.FIX, r"\b(fix|bug|patch|hotfix|repair)\b"),
    (Intent.FEATURE, r"\b(add|implement|create|introduce|enable|support|build out)\b"),
    (Intent.BUILD, r"\b(build|package|artifact|release build|compile)\b"),
    (Intent.DEPLOY, r"\b(deploy|ship|release|promote|push to)\b"),
]
_DEPLOY_WORDS = re.compile(r"\b(deploy\w*|ship|release to|promote|push to|roll\w* out)\b")

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
    # English, then the words teams use in other languages (a directive in Chinese that
    # says production must read as production, never fall back to the default).
    "production": [
        "prod", "production", "live",
        "producción", "produccion", "produção", "producao", "produktion", "produzione",
        "生产环境", "正式环境", "本番環境", "本番", "продакшн", "продакшен", "прод",
        "продуктив", "الإنتاج",
    ],
    "staging": [
        "staging", "stage", "stg", "preprod", "pre-prod",
        "preproducción", "preproduccion", "préproduction", "preproduction",
        "预发布环境", "预发环境", "ステージング", "ステージング環境", "стейджинг", "стейдж",
    ],
    "development": [
        "dev", "development",
        "desarrollo", "développement", "developpement", "entwicklung", "sviluppo",
        "开发环境", "開発環境", "разработка", "дев",
    ],
}  # fmt: skip

# Letters that continue a word around a name (Latin, accented Latin, Cyrillic, Greek);
# CJK and Arabic names are matched without word boundaries.
_LETTER = r"a-z0-9\u00c0-\u024f\u0370-\u03ff\u0400-\u04ff"


def mention(word: str) -> str:
    """A regex for ``word`` as a whole word in lower-cased text, in any script."""
    w = re.escape(word.lower())
    if word.isascii():
        return rf"\b{w}\b"
    return rf"(?<![{_LETTER}]){w}(?![{_LETTER}])"


_REF = re.compile(r"\b(?:branch|ref|tag)\s+[`'\"]?([A-Za-z0-9][A-Za-z0-9._/-]{0,99})")
_COMMIT = re.compile(r"\b(?:commit|sha|revision)\s+[`'\"]?([0-9a-f]{7,64})\b", re.I)


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
    # The directive asks for a deployment (not only for artifacts).
    deploys: bool = True
    # What Φ assumed, in plain words for the card.
    assumptions: list[str] = field(default_factory=list)
    # Environments the text nearly named (a typo, another script): the level is at
    # least theirs, since a guess never lowers it.
    lookalike_environments: list[str] = field(default_factory=list)


def _words_for_env(name: str, aliases: list[str]) -> list[str]:
    return sorted({name, *aliases, *_ENV_ALIASES.get(name, [])}, key=len, reverse=True)


def _find_environment(text: str, constitution: Constitution) -> tuple[str | None, list[str]]:
    """The environment the directive names, plus any names it used that are not allowed."""
    lowered = text.lower()
    found: list[tuple[int, str]] = []
    for name, rule in constitution.environments.items():
        # Every mention counts: "production means staging … deploy to staging" is staging.
        for word in _words_for_env(name, rule.aliases):
            for match in re.finditer(mention(word), lowered):
                found.append((match.start(), name))
    unknown = [
        canonical
        for canonical, words in _ENV_ALIASES.items()
        if canonical not in constitution.environments
        and any(re.search(mention(w), lowered) for w in words)
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
    # "deploy to staging" — the environment after "to/into", else after "in/on", is the
    # target ("tested in dev, deploy to prod" is production).
    for before in (r"\b(to|into)\s+(the\s+)?$", r"\b(in|on)\s+(the\s+)?$"):
        for pos, name in sorted(found):
            if re.search(before, lowered[max(0, pos - 12) : pos]):
                return name, unknown
    return sorted(found)[0][1], unknown


def _other_environments(text: str, chosen: str, constitution: Constitution) -> list[str]:
    lowered = text.lower()
    return [
        name
        for name, rule in constitution.environments.items()
        if name != chosen
        and any(re.search(mention(w), lowered) for w in _words_for_env(name, rule.aliases))
    ]


_GITHUB_URL = re.compile(r"https?://(?:www\.)?github\.com/", re.I)
_URL = re.compile(r"\b(?:https?|ftp)://\S+", re.I)


def _find_repo(text: str, constitution: Constitution) -> tuple[RepoRule | None, list[str]]:
    # A GitHub link names its repo; any other URL names none; "branch release/2" is a ref.
    text = _REF.sub(" ", _URL.sub(" ", _GITHUB_URL.sub("", text)))
    lowered = text.lower()
    # The target is the repo named first after the last deploy verb, else the one named
    # first: "deploy the frontend (auth team FYI)" and "the frontend... no, deploy auth".
    hits: list[tuple[int, int]] = []
    for order, repo in enumerate(constitution.repos):
        short = repo.name.split("/", 1)[1]
        for word in [repo.name, short, *repo.aliases]:
            match = re.search(rf"(?<![\w/.-]){re.escape(word.lower())}(?![\w/-])", lowered)
            if match:
                hits.append((match.start(), order))
    known = {r.name.lower() for r in constitution.repos}
    if hits:
        verbs = [m.end() for m in _DEPLOY_WORDS.finditer(lowered)]
        after = [hit for hit in hits if verbs and hit[0] >= verbs[-1]]
        # Beside a known repo, only lower-case owner/name slugs count as other repos
        # ("CI/CD" or "and/or" are words, "evil/backdoor" is a repository).
        slugs = re.findall(
            r"(?<![\w/.-])([a-z0-9][a-z0-9_.-]*/[a-z0-9][a-z0-9_.-]*)(?![\w/])", text
        )
        outside = [n for n in slugs if n.lower() not in known and n not in ("and/or", "either/or")]
        return constitution.repos[min(after or hits)[1]], outside
    named = re.findall(r"\b([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)\b", text)
    outside = [n for n in named if not n.lower().startswith(("http", "www")) and "." not in n[:1]]
    return None, outside


def also_named_repos(text: str, chosen: RepoRule, constitution: Constitution) -> list[str]:
    """Other repositories of the constitution the directive names besides the target."""
    lowered = _URL.sub(" ", _GITHUB_URL.sub("", text)).lower()
    return [
        repo.name
        for repo in constitution.repos
        if repo.name != chosen.name
        and any(
            re.search(rf"(?<![\w/.-]){re.escape(w.lower())}(?![\w/-])", lowered)
            for w in [repo.name, repo.name.split("/", 1)[1], *repo.aliases]
        )
    ]


def _component(text: str) -> str:
    match = re.search(
        r"\b(?:to|in|for|on) (?:the )?([a-z][a-z0-9 _-]{2,60}?)(?: and | to |,|\.|$)", text, re.I
    )
    if match:
        return match.group(1).strip()
    return "the service"


def interpret(
    raw: str, constitution: Constitution, kind: Literal["directive", "rollback"] = "directive"
) -> Reading:
    flat = strip_slack_markup(raw)
    text = clean_text(flat)
    lowered = text.lower()
    problems: list[RuleHit] = []
    assumptions: list[str] = []
    if len(unicodedata.normalize("NFKC", flat).strip()) > MAX_DIRECTIVE_CHARS:
        assumptions.append(
            f"The directive was longer than {MAX_DIRECTIVE_CHARS} characters; "
            "only its beginning was read"
        )

    matched = next((i for i, pat in _INTENT_PATTERNS if re.search(pat, lowered)), None)
    intent = Intent.ROLLBACK if kind == "rollback" else matched or Intent.FEATURE

    found_repo, outside_repos = _find_repo(text, constitution)
    repo = found_repo or constitution.main_repo()
    for name in outside_repos:
        problems.append(
            RuleHit(
                id="target.repo-not-allowed",
                message=f"Repository {name[:80]} is not in the constitution's allowed repos",
                effect="deny",
            )
        )
    if found_repo is None and not outside_repos:
        assumptions.append(f"No repository was named; {repo.name} (the default) was assumed")
    if found_repo is not None:
        others = also_named_repos(text, found_repo, constitution)
        if others:
            problems.append(
                RuleHit(
                    id="target.other-repos",
                    message=f"The directive also names {', '.join(others)}; "
                    f"this plan targets {found_repo.name} only",
                    effect="warn",
                )
            )
    ref = repo.default_ref
    # A rollback restores what the deployment history names: its text picks no ref.
    named_ref = _REF.search(text) if kind == "directive" else None
    if named_ref:
        wanted = named_ref.group(1).rstrip(".,;:")
        if ref_allowed(repo, wanted):
            ref = wanted
        else:
            problems.append(
                RuleHit(
                    id="target.ref-not-allowed",
                    message=f"'{wanted[:60]}' is not a ref {repo.name} may run from under the "
                    f"constitution ({', '.join([repo.default_ref, *repo.refs])})",
                    effect="deny",
                )
            )
    commit = _COMMIT.search(text) if kind == "directive" else None
    if commit:
        assumptions.append(
            f"The directive names commit {commit.group(1)[:12]}; a directive runs the head "
            f"of {ref}, never a named commit (only a rollback restores one)"
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
        if not unknown_envs:
            assumptions.append(f"No environment was named; {env} (the default) was assumed")
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
    near = _lookalikes(text, constitution)
    lookalike_envs = [n for n in near.environments if n != env]
    for word, name in near.described:
        assumptions.append(f"'{word[:40]}' looks like {name} but does not match it exactly")
    for word, name in near.spoofed_repos:
        problems.append(
            RuleHit(
                id="target.repo-lookalike",
                message=f"'{word[:60]}' imitates {name} with look-alike characters",
                effect="deny",
            )
        )

    artifacts = [name for name, pat in _ARTIFACT_PATTERNS if re.search(pat, lowered)]
    if not artifacts and intent not in (Intent.ROLLBACK, Intent.CONFIG):
        artifacts = repo.artifacts_by_default

    return Reading(
        text=text,
        intent=intent,
        environment=env,
        repo=repo,
        ref=ref,
        artifacts=artifacts,
        component=_component(text),
        explicit_environment=explicit,
        intent_matched=matched is not None or kind == "rollback",
        explicit_repo=not outside_repos and found_repo is not None,
        problems=problems,
        deploys=intent != Intent.BUILD or bool(_DEPLOY_WORDS.search(lowered)),
        assumptions=assumptions,
        lookalike_environments=lookalike_envs,
    )


# Latin look-alikes from other scripts (Unicode's confusables, the common ones).
_CONFUSABLES = str.maketrans(
    "аеорсухіјѕԁɡһӏԛԝαοριτυνχΑΒΕΗΙΚΜΝΟΡΤΥΧΖАВЕКМНОРСТХ",
    "aeopcyxijsdghlqwaopitvvxABEHIKMNOPTYXZABEKMHOPCTX",
)


def _skeleton(word: str) -> str:
    folded = unicodedata.normalize("NFKD", word.translate(_CONFUSABLES))
    return "".join(c for c in folded if not unicodedata.combining(c)).lower()


@dataclass(frozen=True)
class _Near:
    environments: list[str]
    described: list[tuple[str, str]]
    spoofed_repos: list[tuple[str, str]]


def _lookalikes(text: str, constitution: Constitution) -> _Near:
    """Words that nearly name an environment or repo: typos and other scripts."""
    env_words = {
        w.lower(): n
        for n, r in constitution.environments.items()
        for w in _words_for_env(n, r.aliases)
    }
    repo_words = {
        w.lower(): r.name
        for r in constitution.repos
        for w in [r.name, r.name.split("/", 1)[1], *r.aliases]
        if " " not in w
    }
    envs: list[str] = []
    described: list[tuple[str, str]] = []
    spoofed: list[tuple[str, str]] = []
    for word in dict.fromkeys(re.findall(r"[^\s,;:!?()\[\]{}\"'`<>]+", text)):
        word = word.strip(".")
        low = word.lower()
        if len(low) < 4 or low in env_words or low in repo_words:
            continue
        skeleton = _skeleton(word)
        if skeleton in repo_words:
            spoofed.append((word, repo_words[skeleton]))
            continue
        if skeleton in env_words:
            envs.append(env_words[skeleton])
            described.append((word, env_words[skeleton]))
            continue
        close = difflib.get_close_matches(skeleton, list(env_words), n=1, cutoff=0.8)
        if close:
            envs.append(env_words[close[0]])
            described.append((word, env_words[close[0]]))
            continue
        close = difflib.get_close_matches(skeleton, list(repo_words), n=1, cutoff=0.85)
        if close and "/" in word:
            described.append((word, repo_words[close[0]]))
    # Aliases of several words ("web app"): "web аpp" imitates one as a whole.
    folded, lowered = _skeleton(text), text.lower()
    for repo in constitution.repos:
        for alias in (a.lower() for a in repo.aliases if " " in a):
            phrase = rf"(?<![\w/.-]){re.escape(alias)}(?![\w/-])"
            if re.search(phrase, folded) and not re.search(phrase, lowered):
                spoofed.append((alias, repo.name))
    return _Near(list(dict.fromkeys(envs)), described, spoofed)


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
    problems = [*asked.problems, *before.problems]
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
        deploys=before.deploys or asked.deploys,
        assumptions=[
            *before.assumptions,
            *(a for a in asked.assumptions if not a.startswith("No ")),
        ],
        lookalike_environments=[*before.lookalike_environments, *asked.lookalike_environments],
    )
