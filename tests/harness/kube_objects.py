"""Pure object logic of the Kubernetes API emulator: patches, label selectors, CRD schemas.

Everything here works on plain JSON-like dicts and raises :class:`ApiError` with the status
code and reason the real API server would answer, so the HTTP layer only has to render it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

JsonObj = dict[str, Any]


class ApiError(Exception):
    """An error the emulator answers as a Kubernetes ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def status(self) -> JsonObj:
        return {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "code": self.code,
            "reason": self.reason,
            "message": self.message,
        }


# ---------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, ``null`` removes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"JSON pointer {path!r} must start with '/'")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    node = doc
    for part in parts[:-1]:
        node = _child(node, part)
    return node


def _child(node: Any, part: str) -> Any:
    try:
        if isinstance(node, list):
            return node[int(part)]
        return node[part]
    except (KeyError, IndexError, ValueError, TypeError):
        raise ApiError(422, "Invalid", f"JSON patch path element {part!r} does not exist") from None


def _json_get(doc: Any, path: str) -> Any:
    node = doc
    for part in _pointer(path):
        node = _child(node, part)
    return node


def _json_add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent, last = _parent(doc, parts), parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if not 0 <= index <= len(parent):
            raise ApiError(422, "Invalid", f"JSON patch index {last} out of range at {path}")
        parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise ApiError(422, "Invalid", f"JSON patch cannot add below a scalar at {path}")
    return doc


def _json_remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    parent, last = _parent(doc, parts), parts[-1]
    _child(parent, last)  # raises when absent
    if isinstance(parent, list):
        del parent[int(last)]
    else:
        del parent[last]
    return doc


def json_patch(doc: JsonObj, ops: Any) -> JsonObj:
    """RFC 6902 JSON patch; a failed ``test`` answers 422 as the API server does."""
    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
    result: Any = copy.deepcopy(doc)
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        if kind == "test":
            if _json_get(result, path) != op.get("value"):
                raise ApiError(422, "Invalid", f"the JSON patch test at {path} failed")
        elif kind == "add":
            result = _json_add(result, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            result = _json_remove(result, path)
        elif kind == "replace":
            result = _json_remove(result, path) if _pointer(path) else result
            result = _json_add(result, path, copy.deepcopy(op.get("value")))
        elif kind in ("move", "copy"):
            value = copy.deepcopy(_json_get(result, op.get("from", "")))
            if kind == "move":
                result = _json_remove(result, op.get("from", ""))
            result = _json_add(result, path, value)
        else:
            raise ApiError(422, "Invalid", f"unknown JSON patch operation {kind!r}")
    if not isinstance(result, dict):
        raise ApiError(422, "Invalid", "a JSON patch must leave an object")
    return result


# ---------------------------------------------------------------- label selectors

_SET_TERM = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_terms(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [term.strip() for term in terms if term.strip()]


def label_selector_matches(selector: str | None, labels: Mapping[str, str] | None) -> bool:
    """Kubernetes label selector syntax: ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``in``, ``notin``."""
    if not selector:
        return True
    labels = labels or {}
    for term in _split_terms(selector):
        if match := _SET_TERM.match(term):
            key, op, values = match.group(1), match.group(2), {v.strip() for v in match.group(3).split(",")}
            inside = key in labels and labels[key] in values
            if inside != (op == "in"):
                return False
        elif "!=" in term:
            key, value = (part.strip() for part in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (part.strip() for part in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_selector_matches(selector: str | None, obj: JsonObj) -> bool:
    """Only the fields every resource supports: ``metadata.name`` and ``metadata.namespace``."""
    if not selector:
        return True
    meta = obj.get("metadata", {})
    for term in _split_terms(selector):
        negate = "!=" in term
        key, value = (part.strip() for part in term.replace("!=", "=").replace("==", "=").split("=", 1))
        field = key.removeprefix("metadata.")
        if key not in ("metadata.name", "metadata.namespace"):
            raise ApiError(400, "BadRequest", f'field label not supported: "{key}"')
        if (meta.get(field) == value) == negate:
            return False
    return True


# ---------------------------------------------------------------- CRD schemas


def apply_defaults(schema: Mapping[str, Any] | None, value: Any) -> Any:
    """Fill ``default`` values from a structural OpenAPI v3 schema, as the API server does."""
    if not schema:
        return value
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(sub, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in list(value):
                if key not in (schema.get("properties") or {}):
                    value[key] = apply_defaults(extra, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def prune(schema: Mapping[str, Any] | None, value: Any, root: bool = False) -> Any:
    """Drop fields a structural schema does not declare, as the API server does on every write."""
    if not schema:
        return value
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        keep_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields")) or extra is True
        for key in list(value):
            if root and key in ("apiVersion", "kind", "metadata"):
                continue
            if key in properties:
                value[key] = prune(properties[key], value[key])
            elif isinstance(extra, dict):
                value[key] = prune(extra, value[key])
            elif not keep_unknown:
                del value[key]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(schema["items"], item) for item in value]
    return value


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def validate(schema: Mapping[str, Any] | None, value: Any, path: str = "") -> list[str]:
    """The common subset of OpenAPI v3 checks, with the API server's wording of each failure."""
    if not schema or (schema.get("x-kubernetes-int-or-string") and isinstance(value, int | str)):
        return []
    errors: list[str] = []
    kind = schema.get("type")
    if kind in _TYPES and (
        not isinstance(value, _TYPES[kind]) or (kind in ("integer", "number") and isinstance(value, bool))
    ):
        return [f'{path}: Invalid value: "{type(value).__name__}": {path} in body must be of type {kind}']
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(f'"{item}"' for item in schema["enum"])
        errors.append(f'{path}: Unsupported value: "{value}": supported values: {allowed}')
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(
                f"{path}: Invalid value: {value}: {path} in body should be greater than or equal to "
                f"{schema['minimum']}"
            )
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(
                f"{path}: Invalid value: {value}: {path} in body should be less than or equal to "
                f"{schema['maximum']}"
            )
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(
                f'{path}: Invalid value: "{value}": {path} in body should be at least '
                f"{schema['minLength']} chars long"
            )
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(
                f"{path}: Invalid value: \"{value}\": {path} in body should match '{schema['pattern']}'"
            )
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(
                f"{path}: Invalid value: {len(value)}: {path} in body should have at least "
                f"{schema['minItems']} items"
            )
        if isinstance(schema.get("items"), dict):
            for index, item in enumerate(value):
                errors += validate(schema["items"], item, f"{path}[{index}]")
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for key in schema.get("required") or []:
            if key not in value:
                errors.append(f"{path}.{key}: Required value".lstrip("."))
        for key, item in value.items():
            sub = properties.get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            errors += validate(sub, item, f"{path}.{key}".lstrip("."))
    return errors
