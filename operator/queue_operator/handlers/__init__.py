"""kopf handlers of the operator, one module per resource; :func:`register` installs them."""

from __future__ import annotations

import kopf

from queue_operator.handlers import delayqueue, kafkaqueue
from queue_operator.handlers.options import Options


def register_login(registry: kopf.OperatorRegistry) -> None:
    """The same credentials as the kubernetes client: in-cluster service account or KUBECONFIG."""
    kopf.on.login(registry=registry)(kopf.login_via_client)


def register(registry: kopf.OperatorRegistry, options: Options) -> None:
    delayqueue.register(registry, options)
    kafkaqueue.register(registry, options)
