"""Check requests (and the fake's own replies) against GitHub's official OpenAPI description.

``tests/fakes/github_spec.json`` is a pruned copy of @octokit/openapi (see
``scripts/update-github-spec.py``). Requests are checked strictly: the path must be
a documented operation, query parameters documented and well-typed, the body valid
against the request schema. Replies are checked for shape: every field the fake sends
must have the documented type (fields the fake leaves out are not required of it).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SPEC_FILE = Path(__file__).with_name("github_spec.json")


@functools.cache
def spec() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SPEC_FILE.read_text())
    return data


def _to_json_schema(node: Any, *, keep_required: bool) -> Any:
    """OpenAPI 3.0 schema → JSON Schema: ``nullable`` becomes a "null" type."""
    if isinstance(node, list):
        return [_to_json_schema(n, keep_required=keep_required) for n in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: _to_json_schema(v, keep_required=keep_required)
        for k, v in node.items()
        if k not in ("nullable", "discriminator", "xml", "readOnly", "writeOnly", "deprecated")
        and (keep_required or k != "required" or not isinstance(v, list))
    }
    if node.get("nullable"):
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        elif "type" not in out:
            out = {"anyOf": [out, {"type": "null"}]}
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


def _multi_segment(template: str) -> set[str]:
    """Path parameters that may hold slashes (``x-multi-segment``, e.g. compare's
    ``basehead``: branch names such as ``sophie/plan_x``)."""
    entry = spec()["paths"][template]
    params = [*entry.get("parameters", [])]
    for method, operation in entry.items():
        if method != "parameters" and isinstance(operation, dict):
            params += operation.get("parameters", [])
    return {p["name"] for p in params if p.get("in") == "path" and p.get("x-multi-segment")}


@functools.cache
def _templates() -> list[tuple[re.Pattern[str], str]]:
    found = []
    for template in spec()["paths"]:
        pattern = re.escape(template)
        for name in _multi_segment(template):
            pattern = pattern.replace(re.escape("{" + name + "}"), ".+")
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", pattern)
        found.append((re.compile(f"^{pattern}$"), template))
    # Literal segments beat parameters (/releases/tags/{tag} before /releases/{id}).
    return sorted(found, key=lambda p: p[1].count("{"))


def match(path: str) -> str | None:
    for pattern, template in _templates():
        if pattern.match(path):
            return template
    return None


@functools.cache
def _validator(key: str, schema_json: str, keep_required: bool) -> Draft202012Validator:
    schema = _to_json_schema(json.loads(schema_json), keep_required=keep_required)
    return Draft202012Validator(schema, format_checker=None)


def _errors(key: str, schema: Any, value: Any, keep_required: bool) -> list[str]:
    validator = _validator(key, json.dumps(schema, sort_keys=True), keep_required)
    return [
        f"{'/'.join(str(p) for p in e.absolute_path) or '(body)'}: {e.message}"
        for e in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))[:10]
    ]


def _param_ok(schema: dict[str, Any], raw: str) -> bool:
    kind = schema.get("type")
    if "enum" in schema and raw not in [str(v) for v in schema["enum"]]:
        return False
    if kind == "integer":
        return re.fullmatch(r"-?\d+", raw) is not None
    if kind == "boolean":
        return raw in ("true", "false")
    return True


def check_request(method: str, path: str, query: dict[str, str], body: Any) -> list[str]:
    """Why GitHub would refuse this request (empty when it matches the description)."""
    template = match(path)
    if template is None:
        return [f"{method} {path} is not a documented operation"]
    entry = spec()["paths"][template]
    operation = entry.get(method.lower())
    if operation is None:
        return [f"{method} is not allowed on {template}"]
    problems = []
    params = [*entry.get("parameters", []), *operation.get("parameters", [])]
    known = {p["name"]: p for p in params if p.get("in") == "query"}
    for name, value in query.items():
        if name not in known:
            problems.append(f"unknown query parameter {name!r}")
        elif not _param_ok(known[name].get("schema", {}), value):
            problems.append(f"query parameter {name}={value!r} has the wrong type")
    request_body = operation.get("requestBody")
    if request_body is not None:
        schema = request_body.get("content", {}).get("application/json", {}).get("schema")
        if body is None and request_body.get("required"):
            problems.append("a JSON body is required")
        elif schema is not None and body is not None:
            problems += _errors(f"req:{method}:{template}", schema, body, keep_required=True)
    elif body not in (None, {}, ""):
        problems.append("this operation takes no body")
    return problems


def check_response(method: str, path: str, status: int, body: Any) -> list[str]:
    """Where the fake's reply differs in shape from what GitHub documents."""
    template = match(path)
    if template is None:
        return [f"no documented operation for {path}"]
    responses = spec()["paths"][template][method.lower()]["responses"]
    documented = responses.get(str(status))
    if documented is None:
        if status >= 400:
            return []  # error bodies ({"message": ...}) are not all documented
        return [f"status {status} is not documented for {method} {template}"]
    schema = (documented.get("content") or {}).get("application/json", {}).get("schema")
    if schema is None:
        return [] if body in (None, b"", "") else [f"{status} has no documented body"]
    return _errors(f"res:{method}:{template}:{status}", schema, body, keep_required=False)
