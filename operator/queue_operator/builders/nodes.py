"""The ConfigMap ``<name>-nodes``: a DelayQueue's beanstalkd nodes and their state, for sidecars.

The injected sidecars mount it and watch the file (``nodes.json``, read by
``queue_engine.dq.membership``): producers write to ``active`` nodes only, consumers read from
``active`` and ``draining`` ones. Kept current by the DelayQueue handlers as nodes are added,
drained and removed; owned by the DelayQueue.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from queue_operator.builders.beanstalkd import APP, PORT, child_name
from queue_operator.builders.labels import common_labels

NODES_FILE = "nodes.json"
COMPONENT = "delayqueue-nodes"


def nodes_configmap_name(body: Mapping[str, Any]) -> str:
    return f"{body['metadata']['name']}-nodes"


def node_endpoints(body: Mapping[str, Any], count: int) -> list[str]:
    """``host:port`` of nodes 0..count-1 by their stable DNS names (see beanstalkd.endpoints)."""
    name, namespace = child_name(body), str(body["metadata"]["namespace"])
    return [f"{name}-{i}.{name}.{namespace}.svc:{PORT}" for i in range(count)]


def configmap(body: Mapping[str, Any], active: Sequence[str], draining: Sequence[str]) -> dict[str, Any]:
    nodes = [{"address": a, "state": "active"} for a in active]
    nodes += [{"address": a, "state": "draining"} for a in draining]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": nodes_configmap_name(body),
            "namespace": str(body["metadata"]["namespace"]),
            "labels": common_labels(APP, str(body["metadata"]["name"]), COMPONENT),
        },
        "data": {NODES_FILE: json.dumps({"nodes": nodes}, indent=1) + "\n"},
    }
