"""The HTTP API's pure parts: tokens, the constitution's `api:` rules, what Φ reads for
a request, the Prefer header, the status words, and the OpenAPI document itself."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate as validate_openapi

from bot.api import API_STATUS, Refused, directive_text, prefer_wait, token_for
from bot.openapi import PlanRequest, document
from roles.constitution import (
    ConstitutionError,
    from_bundle,
    load_constitution,
    parse_constitution,
)
from roles.records import PlanStatus

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "sophie_unit-test-token-0123456789abcdefghijkl"
DIGEST = hashlib.sha256(TOKEN.encode()).hexdigest()


def _text() -> str:
    return (ROOT / "constitution.yml").read_text().replace("policies_dir: policies\n", "")


def _with_api(tokens: list[dict[str, Any]]) -> str:
    return _text() + "\n" + yaml.safe_dump({"api": {"tokens": tokens}})


def _token(**overrides: Any) -> dict[str, Any]:
    token: dict[str, Any] = {
        "name": "ci-pipeline",
        "sha256": DIGEST,
        "scopes": ["plans:write", "plans:read", "trust-gate"],
        "channel": "C0DEPLOYS1",
        "team": "T0SOPHIE01",
        "user": "U0DAVE0004",
    }
    token.update(overrides)
    return {k: v for k, v in token.items() if v is not None}


# -- tokens ----------------------------------------------------------------------------


def test_a_token_is_found_by_its_digest_only() -> None:
    tokens = parse_constitution(_with_api([_token()])).api.tokens
    assert token_for(tokens, f"Bearer {TOKEN}") == tokens[0]
    assert token_for(tokens, f"bearer   {TOKEN}  ") == tokens[0]
    for header in (
        "",
        "Bearer",
        "Bearer ",
        f"Basic {TOKEN}",
        f"Bearer {TOKEN}x",
        f"Bearer {DIGEST}",  # the digest is not the token
        f"Token {TOKEN}",
        "Bearer " + "a" * 5000,
        "Bearer \udcff",
    ):
        assert token_for(tokens, header) is None, header


def test_token_rules_are_closed_and_fail_closed() -> None:
    # The example constitution documents a token but grants none.
    assert load_constitution(ROOT / "constitution.yml").api.tokens == []
    refused = {
        "no channel": (_token(channel=None), "set channel"),
        "writer without a user": (_token(user=None), "set team"),
        "writer without a team": (_token(team=None), "set team"),
        "an unknown scope": (_token(scopes=["plans:delete"]), "scopes"),
        "no scope": (_token(scopes=[]), "scopes"),
        "a DM as channel": (_token(channel="D0DIRECT01"), "channel"),
        "not a digest": (_token(sha256=TOKEN), "sha256"),
        "the token itself, short": (_token(sha256="abc123"), "sha256"),
        "an unknown key": ({**_token(), "secret": TOKEN}, "secret"),
    }
    for case, (token, says) in refused.items():
        with pytest.raises(ConstitutionError) as caught:
            parse_constitution(_with_api([token]))
        assert says in str(caught.value), case
    twice = [_token(), _token(sha256="a" * 64)]
    with pytest.raises(ConstitutionError, match="name ci-pipeline is used twice"):
        parse_constitution(_with_api(twice))
    with pytest.raises(ConstitutionError, match="is used twice"):
        parse_constitution(_with_api([_token(), _token(name="other")]))
    # A reader needs no identity to request as; its channel bounds what it reads.
    reader = _token(scopes=["plans:read"], team=None, user=None)
    assert parse_constitution(_with_api([reader])).api.tokens[0].user is None
    # `sha256sum` output, upper case or a "sha256:" prefix are the same digest.
    loose = _token(sha256="sha256:" + DIGEST.upper())
    assert parse_constitution(_with_api([loose])).api.tokens[0].sha256 == DIGEST


def test_tokens_are_not_part_of_the_digest_nor_published() -> None:
    plain = parse_constitution(_text())
    granted = parse_constitution(_with_api([_token()]))
    assert granted.digest_hex == plain.digest_hex  # a new token voids no approval
    assert "api" not in granted.model_dump(mode="json")
    bundle = granted.bundle()
    assert DIGEST not in bundle["yaml"] and "ci-pipeline" not in bundle["yaml"]
    assert "api" not in yaml.safe_load(bundle["yaml"])
    assert "# SOPHIE constitution" in bundle["yaml"]  # the YAML, comments and all
    assert from_bundle(bundle).digest_hex == plain.digest_hex
    # A section that cannot be cut out line by line: the rules go out as JSON instead.
    odd = _text() + 'api: {tokens: [\n{"name": "x", "sha256": "%s", "scopes": [plans:read],\n' % (
        "b" * 64
    )
    odd += '"channel": C0DEPLOYS1}\n]}\n'
    tricky = parse_constitution(odd)
    published = tricky.bundle()["yaml"]
    assert "b" * 64 not in published and "api" not in yaml.safe_load(published)
    assert from_bundle(tricky.bundle()).digest_hex == plain.digest_hex


# -- what Φ reads for a request ----------------------------------------------------------


def _rules() -> Any:
    return parse_constitution(_text())


def test_the_requested_target_is_named_where_the_directive_names_none() -> None:
    rules = _rules()
    ask = PlanRequest(directive="Add a login banner", repo="acme/web-frontend")
    assert directive_text(ask, rules) == "Repository acme/web-frontend: Add a login banner"
    ask = PlanRequest(directive="Add a login banner", environment="production")
    assert directive_text(ask, rules) == "environment production: Add a login banner"
    ask = PlanRequest(directive="Add caching to the auth service and deploy to staging")
    assert directive_text(ask, rules) == ask.directive
    same = PlanRequest(
        directive="Deploy the auth service to staging",
        repo="acme/auth-service",
        environment="staging",
    )
    assert directive_text(same, rules) == same.directive


@pytest.mark.parametrize(
    ("directive", "repo", "environment", "status", "says"),
    [
        ("Add a banner", "acme/nope", None, 422, "not in the constitution"),
        ("Add a banner", None, "qa", 422, "not an environment"),
        ("Add a banner", "acme/web-frontend", "development", 422, "deploys only to"),
        ("Deploy the auth service", "acme/web-frontend", None, 422, "names acme/auth-service"),
        ("Deploy to production", None, "staging", 422, "names production"),
        ("\u200b\u200b<!channel>", None, None, 400, "empty"),
    ],
)
def test_a_request_that_contradicts_its_directive_or_the_rules_is_refused(
    directive: str, repo: str | None, environment: str | None, status: int, says: str
) -> None:
    ask = PlanRequest(directive=directive, repo=repo, environment=environment)
    with pytest.raises(Refused) as caught:
        directive_text(ask, _rules())
    assert caught.value.status == status and says in caught.value.detail


def test_prefer_header() -> None:
    assert prefer_wait("") == 25
    assert prefer_wait("respond-async") == 0
    assert prefer_wait("respond-async, wait=5") == 5
    assert prefer_wait("wait=600") == 60
    assert prefer_wait("wait=-3") == 0
    assert prefer_wait("wait=soon, handling=lenient") == 25


def test_every_plan_status_has_a_word_in_the_document() -> None:
    assert set(API_STATUS) == set(PlanStatus)
    words = document()["components"]["schemas"]["PlanStatusResult"]["properties"]["status"]
    enum = words.get("enum") or document()["components"]["schemas"]["ApiStatus"]["enum"]
    assert set(API_STATUS.values()) <= set(enum)
    assert "completed" in enum and "planning" in enum


def test_the_openapi_document_is_valid_openapi_3_1() -> None:
    doc = document()
    validate_openapi(doc)  # raises on anything invalid
    assert doc["openapi"] == "3.1.0"
    paths = doc["paths"]
    assert set(paths) == {
        "/api/v1/plans",
        "/api/v1/plans/{plan_id}",
        "/api/v1/trust-gate",
        "/api/v1/openapi.json",
    }
    schemas = doc["components"]["schemas"]
    # The seed's field names.
    assert {"plan_yaml", "confidence_score", "risk_assessment", "change_summary"} <= set(
        schemas["PlanResult"]["properties"]
    )
    assert {"status", "plan_id", "staging_url", "artifact_urls", "dashboard_url"} <= set(
        schemas["PlanStatusResult"]["required"]
    )
    assert {"approved", "reasons", "audit_ref", "validation_results"} <= set(
        schemas["TrustGateResult"]["required"]
    )
    # Requests are closed.
    for name in ("PlanRequest", "TrustGateById", "TrustGateByPlan", "Envelope"):
        assert schemas[name]["additionalProperties"] is False, name
