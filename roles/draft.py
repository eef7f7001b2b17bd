"""What a planner (an LLM or the offline planner) proposes, before Δ decides.

A draft carries no target, approval level or identity: those come from Φ and
the constitution, never from a model.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from roles.plan import Action, Intent, RiskLevel

Text = Annotated[str, StringConstraints(min_length=1, max_length=1000)]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DraftInput(_Closed):
    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    value: Annotated[str, StringConstraints(max_length=1000)]


class DraftStep(_Closed):
    action: Action
    description: Text
    inputs: list[DraftInput] = Field(max_length=10)


class DraftRiskFactor(_Closed):
    id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    message: Annotated[str, StringConstraints(min_length=1, max_length=300)]


class DraftRisk(_Closed):
    level: RiskLevel
    factors: list[DraftRiskFactor] = Field(max_length=10)
    mitigations: list[Annotated[str, StringConstraints(min_length=1, max_length=300)]] = Field(
        max_length=10
    )


class DraftRollback(_Closed):
    strategy: Literal["redeploy_previous", "revert_commit", "feature_flag_off", "restore_backup"]
    description: Text


class PlanDraft(_Closed):
    intent: Intent
    summary: Text
    steps: list[DraftStep] = Field(min_length=1, max_length=20)
    artifacts: list[Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.+-]{0,30}$")]] = (
        Field(max_length=10)
    )
    risk: DraftRisk
    rollback: DraftRollback


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inline(copy.deepcopy(defs[schema["$ref"].rsplit("/", 1)[1]]), defs)
        out = {}
        for key, value in schema.items():
            if key in ("title", "default", "$defs"):
                continue
            out[key] = _inline(value, defs)
        if out.get("type") == "object":
            # Strict structured output: every property required, nothing extra.
            out["required"] = list(out.get("properties", {}))
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_inline(item, defs) for item in schema]
    return schema


def draft_json_schema() -> dict[str, Any]:
    """The draft's JSON Schema in the subset OpenAI-style strict mode accepts."""
    raw = PlanDraft.model_json_schema()
    schema: dict[str, Any] = _inline(raw, raw.get("$defs", {}))
    # Length/pattern keywords are not all supported in strict mode; pydantic re-checks them.
    stripped: dict[str, Any] = _strip_unsupported(schema)
    return stripped


_UNSUPPORTED = {"minLength", "maxLength", "pattern", "minItems", "maxItems"}


def _strip_unsupported(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_unsupported(v) for k, v in schema.items() if k not in _UNSUPPORTED}
    if isinstance(schema, list):
        return [_strip_unsupported(v) for v in schema]
    return schema
