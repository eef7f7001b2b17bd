"""Δ's policies as code: conftest-style Rego (``package main``, ``deny`` / ``warn``).

Evaluated in-process with regopy, over the plan as Δ sees it. Each ``deny``
blocks the plan with its message; each ``warn`` is shown on the card. A rule
may yield a string, or an object ``{"msg": ..., "id": ...}`` to name itself.
Policies use Rego v1 syntax (``deny contains msg if { ... }``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from regopy import Interpreter, RegoError

from roles.plan import RuleHit

QUERY = "result := data.main"
_ID = re.compile(r"[^a-z0-9_.-]+")


class PolicyError(ValueError):
    """A policy file does not compile or does not evaluate."""


@dataclass(frozen=True)
class PolicyResult:
    denials: list[RuleHit] = field(default_factory=list)
    warnings: list[RuleHit] = field(default_factory=list)


def _rule_id(kind: str, item: Any) -> str:
    if isinstance(item, dict) and isinstance(item.get("id"), str | int):
        return "policy." + (_ID.sub("-", str(item["id"]).lower()).strip("-") or kind)[:60]
    return f"policy.{kind}"


def _message(item: Any) -> str:
    if isinstance(item, dict):
        item = item.get("msg", item.get("message", json.dumps(item, sort_keys=True)))
    return str(item)[:300] or "(no message)"


def _items(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, dict):  # `deny[msg] = true` style: the keys are the messages
        return [k for k, v in value.items() if v]
    return [value]


def evaluate(sources: dict[str, str], document: dict[str, Any]) -> PolicyResult:
    """Run every policy over ``document``; an empty ``sources`` allows everything."""
    if not sources:
        return PolicyResult()
    rego = Interpreter()
    try:
        for name, text in sorted(sources.items()):
            rego.add_module(name, text)
        rego.set_input_term(json.dumps(document))
        output = rego.query(QUERY)
    except RegoError as exc:
        raise PolicyError(f"policy evaluation failed: {exc}") from exc
    if not output.ok():
        raise PolicyError(f"policy evaluation failed: {str(output)[:500]}")
    text = str(output)
    if text.strip() == "undefined":  # no `package main` rules at all
        return PolicyResult()
    try:
        bindings = json.loads(text)["bindings"]["result"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PolicyError(f"unexpected policy output: {text[:200]}") from exc
    if not isinstance(bindings, dict):
        return PolicyResult()
    return PolicyResult(
        denials=[
            RuleHit(id=_rule_id("deny", i), message=_message(i), effect="deny")
            for i in _items(bindings.get("deny"))
        ],
        warnings=[
            RuleHit(id=_rule_id("warn", i), message=_message(i), effect="warn")
            for i in _items(bindings.get("warn"))
        ],
    )


def check(sources: dict[str, str]) -> None:
    """Compile the policies once (at load time) so a broken file is reported early."""
    evaluate(sources, {})
