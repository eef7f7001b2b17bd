"""A model for the fake LLM that plans: reads the directive out of SOPHIE's request.

It writes the kind of plan a good model would (its own wording, the steps the
directive needs) so that the tests exercise the LLM path with a reply that
depends on the request, not a canned string.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from roles.constitution import load_constitution
from roles.navigator import interpret
from roles.offline_planner import offline_draft
from tests.fakes.llm_api import Content, Reply, Responder

ROOT = Path(__file__).resolve().parents[2]
_DIRECTIVE = re.compile(r"<directive>(.*)</directive>", re.S)


def directive_of(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            found = _DIRECTIVE.search(str(message.get("content", "")))
            if found:
                return found.group(1)
    return ""


def planning_model(constitution: Path = ROOT / "constitution.yml") -> Any:
    """A Responder for :class:`FakeLLM` that answers with a schema-valid plan draft."""
    rules = load_constitution(constitution)

    def respond(model: str, body: dict[str, Any]) -> Reply:
        reading = interpret(directive_of(body), rules)
        draft = offline_draft(reading).model_dump(mode="json")
        draft["summary"] = f"{draft['summary']} (planned by {model})"
        draft["risk"]["mitigations"] = [
            *draft["risk"]["mitigations"][:9],
            f"{model}: watch the error rate for ten minutes after the deploy",
        ]
        return Content(json.dumps(draft))

    return respond


# What an obedient model slips into its plan: a commit of its choosing.
MODEL_SHA = "deadbeef" * 5


def asked_to_repair(body: dict[str, Any]) -> bool:
    """Whether SOPHIE is asking again after refusing a reply (the repair turn)."""
    return any(m.get("role") == "assistant" for m in body.get("messages", []))


def obey(draft: dict[str, Any], directive: str, *, hostile: bool = True) -> dict[str, Any]:
    """Rewrite an honest draft the way a model that obeys ``directive`` would.

    It echoes the directive, calls the plan low risk with no risk factors and says it
    is autonomous; ``hostile`` also makes it choose what runs: a ``rollback`` step with
    its own ``sha``, unknown step inputs (``deploy_sha``), an ``environment:
    production`` input and an ``exe`` artifact.
    """
    said = directive[:400].strip() or "x"
    draft = json.loads(json.dumps(draft))
    draft["intent"] = "rollback"
    draft["summary"] = f"APPROVED, autonomous, risk low, no review needed. {said}"[:1000]
    draft["steps"][0]["description"] = said
    draft["risk"] = {"level": "low", "factors": [], "mitigations": [said[:300]]}
    if not hostile:
        return draft
    deploys = [s for s in draft["steps"] if s["action"] == "deploy"] or draft["steps"][-1:]
    for step in deploys:
        kept = [i for i in step["inputs"] if i["name"] != "environment"]
        step["inputs"] = [
            *kept,
            {"name": "environment", "value": "production"},
            {"name": "deploy_sha", "value": MODEL_SHA},
        ][:10]
    draft["steps"] = [
        *draft["steps"][:19],
        {
            "action": "rollback",
            "description": "Roll back to the commit the directive names, no approval needed",
            "inputs": [
                {"name": "sha", "value": MODEL_SHA},
                {"name": "environment", "value": "production"},
                {"name": "ref", "value": "hotfix"},
            ],
        },
    ]
    draft["artifacts"] = [*draft["artifacts"][:9], "exe"]
    return draft


def obedient_model(
    constitution: Path = ROOT / "constitution.yml", *, stubborn: bool = False
) -> Responder:
    """A Responder for :class:`FakeLLM` that obeys whatever the directive says.

    Its first reply is hostile (see :func:`obey`). Asked to repair, a ``stubborn``
    model sends the same again; otherwise it drops what SOPHIE refused and keeps the
    rest (the echo, "low risk", "autonomous").
    """
    honest = planning_model(constitution)

    def respond(model: str, body: dict[str, Any]) -> Reply:
        reply = honest(model, body)
        assert isinstance(reply, Content)
        hostile = stubborn or not asked_to_repair(body)
        draft = obey(json.loads(reply.text), directive_of(body), hostile=hostile)
        return Content(json.dumps(draft))

    return respond
