"""kopf handlers of the operator, one module per resource; :func:`register` installs them."""

from __future__ import annotations

from typing import Any

import kopf

from queue_operator import credentials
from queue_operator.handlers import delayqueue, kafkaqueue
from queue_operator.handlers.options import Options


def register_login(registry: kopf.OperatorRegistry) -> None:
    """The pod's service account, else KUBECONFIG: kopf's own login where it can do it (see
    :mod:`queue_operator.credentials`), the kubernetes client's for exec plugins and auth providers."""
    if credentials.needs_kubernetes_library():
        kopf.on.login(registry=registry)(kopf.login_via_client)
    else:

        def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
            return credentials.login(settings)

        kopf.on.login(registry=registry)(login)


def register(registry: kopf.OperatorRegistry, options: Options) -> None:
    delayqueue.register(registry, options)
    kafkaqueue.register(registry, options)
