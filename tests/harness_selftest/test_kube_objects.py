"""The emulator's object logic behaves as the Kubernetes API server documents it."""

from __future__ import annotations

import pytest

from harness.kube_objects import (
    ApiError,
    apply_defaults,
    json_patch,
    label_selector_matches,
    merge_patch,
    prune,
    validate,
)


def test_merge_patch_merges_maps_replaces_lists_and_null_removes() -> None:
    doc = {"a": {"b": 1, "c": 2}, "l": [1, 2], "x": 1}
    assert merge_patch(doc, {"a": {"b": 9}, "l": [3], "x": None}) == {"a": {"b": 9, "c": 2}, "l": [3]}
    assert doc == {"a": {"b": 1, "c": 2}, "l": [1, 2], "x": 1}, "the original is untouched"


def test_json_patch_operations_and_failed_test() -> None:
    doc = {"metadata": {"resourceVersion": "5", "finalizers": ["a"]}}
    patched = json_patch(
        doc,
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": "5"},
            {"op": "add", "path": "/metadata/finalizers/-", "value": "b"},
            {"op": "replace", "path": "/metadata/finalizers/0", "value": "z"},
            {"op": "add", "path": "/metadata/labels", "value": {}},
            {"op": "add", "path": "/metadata/labels/k~1x", "value": "v"},
        ],
    )
    assert patched["metadata"]["finalizers"] == ["z", "b"]
    assert patched["metadata"]["labels"] == {"k/x": "v"}, "~1 escapes a slash"
    removed = json_patch(patched, [{"op": "remove", "path": "/metadata/labels/k~1x"}])
    assert removed["metadata"]["labels"] == {}
    with pytest.raises(ApiError) as failed:
        json_patch(doc, [{"op": "test", "path": "/metadata/resourceVersion", "value": "4"}])
    assert failed.value.code == 422


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("app=web", True),
        ("app==web,tier", True),
        ("app!=web", False),
        ("!tier", False),
        ("app in (db, web)", True),
        ("app notin (web)", False),
        ("missing", False),
        ("", True),
    ],
)
def test_label_selectors(selector: str, matches: bool) -> None:
    assert label_selector_matches(selector, {"app": "web", "tier": "front"}) is matches


SCHEMA = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "replicas": {"type": "integer", "minimum": 1, "maximum": 9, "default": 3},
                "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                "nested": {
                    "type": "object",
                    "default": {},
                    "properties": {"x": {"type": "integer", "default": 1}},
                },
            },
        }
    },
}


def test_defaults_fill_nested_objects() -> None:
    obj = apply_defaults(SCHEMA, {"spec": {"name": "n"}})
    assert obj["spec"] == {"name": "n", "replicas": 3, "mode": "a", "nested": {"x": 1}}


def test_validation_reports_each_failure_with_its_path() -> None:
    errors = validate(SCHEMA, {"spec": {"replicas": 12, "mode": "c"}})
    assert "spec.name: Required value" in errors
    assert any("spec.replicas in body should be less than or equal to 9" in e for e in errors)
    assert any('spec.mode: Unsupported value: "c"' in e for e in errors)


def test_prune_drops_undeclared_fields_but_keeps_the_envelope() -> None:
    obj = {
        "apiVersion": "v",
        "kind": "K",
        "metadata": {"name": "n"},
        "spec": {"name": "n", "bogus": 1},
        "x": 1,
    }
    assert prune(SCHEMA, obj, root=True) == {
        "apiVersion": "v",
        "kind": "K",
        "metadata": {"name": "n"},
        "spec": {"name": "n"},
    }
