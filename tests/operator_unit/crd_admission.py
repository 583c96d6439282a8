"""What a Kubernetes API server does with a custom resource, offline: default, validate, run CEL rules.

No API server can run here, so tests check resources against the CRD files the way
kube-apiserver would: structural defaults are applied first (nested defaults inside a
defaulted object included), then the OpenAPI schema is checked with unknown fields refused
(the server would prune them silently, which in an example or a doc is a mistake), then the
``x-kubernetes-validations`` CEL rules are evaluated with cel-python, transition rules
(``oldSelf``) only on updates.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import jsonschema  # type: ignore[import-untyped]
import yaml
from celpy.adapter import json_to_cel

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
CRD_FILES = {
    "DelayQueue": CRD_DIR / "delayqueues.queue-operator.dev.yaml",
    "KafkaQueue": CRD_DIR / "kafkaqueues.queue-operator.dev.yaml",
}


class Refused(Exception):
    """The API server would answer 422 with these messages."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@cache
def load_crd(kind: str) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRD_FILES[kind].read_text())
    return crd


def openapi_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = load_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def admit(obj: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, Any]:
    """The object as stored after create (or update from ``old``), or :class:`Refused`."""
    schema = openapi_schema(obj["kind"])
    stored: dict[str, Any] = apply_defaults(schema, copy.deepcopy(obj))
    validator = jsonschema.Draft7Validator(to_jsonschema(schema, root=True))
    errors = [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(stored)
    ]
    if not errors:
        old_stored = apply_defaults(schema, copy.deepcopy(old)) if old is not None else None
        errors = list(cel_violations(schema, stored, old_stored))
    if errors:
        raise Refused(errors)
    return stored


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fill ``default`` of absent fields, then walk into every present one (defaults included)."""
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in set(value) - set(schema.get("properties", {})):
                value[name] = apply_defaults(extra, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], item) for item in value]
    return value


_COPIED = (
    *("type", "required", "enum", "minimum", "maximum"),
    *("minLength", "maxLength", "pattern", "minItems", "maxItems", "description"),
)


def to_jsonschema(node: dict[str, Any], root: bool = False) -> dict[str, Any]:
    """The structural schema as JSON Schema, refusing fields the CRD does not declare.

    At the root, ``metadata`` is the full ObjectMeta; the CRD may only narrow its name.
    """
    out = {key: node[key] for key in _COPIED if key in node}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    elif "anyOf" in node:
        out["anyOf"] = [to_jsonschema(sub) for sub in node["anyOf"]]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in node:
        out["properties"] = {name: to_jsonschema(sub) for name, sub in node["properties"].items()}
        if root and "metadata" in out["properties"]:
            out["properties"]["metadata"].pop("additionalProperties", None)
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_jsonschema(node["additionalProperties"])
    elif (
        node.get("type") == "object"
        and "properties" in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if isinstance(node.get("items"), dict):
        out["items"] = to_jsonschema(node["items"])
    return out


def cel_violations(schema: dict[str, Any], value: Any, old: Any, path: str = "") -> Iterator[str]:
    """Messages of the CEL rules ``value`` breaks; a rule with ``oldSelf`` runs only on update."""
    for rule in schema.get("x-kubernetes-validations", []):
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue
        activation = {"self": value, **({"oldSelf": old} if transition else {})}
        if not _evaluate(rule["rule"], activation):
            yield f"{path or '<root>'}: {rule.get('message', rule['rule'])}"
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                old_sub = old.get(name) if isinstance(old, dict) else None
                yield from cel_violations(sub, value[name], old_sub, f"{path}.{name}".lstrip("."))


@cache
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _evaluate(rule: str, activation: dict[str, Any]) -> bool:
    result = _program(rule).evaluate({name: json_to_cel(v) for name, v in activation.items()})
    return bool(result)


def schema_nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its dotted path (``[]`` for items, ``{}`` for map values)."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from schema_nodes(sub, f"{path}.{name}".lstrip("."))
    if isinstance(node.get("items"), dict):
        yield from schema_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_nodes(node["additionalProperties"], f"{path}{{}}")
    for sub in node.get("anyOf", []):
        yield from schema_nodes(sub, f"{path}|")


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
