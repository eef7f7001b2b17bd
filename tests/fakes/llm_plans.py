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
from tests.fakes.llm_api import Content, Reply

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
