"""The ``queue-operator`` command: :func:`queue_operator.main.cli`, imported so that kopf does not
load the ``kubernetes`` library when the credentials do not need it (about 35 MB less per pod;
see :mod:`queue_operator.credentials`)."""

from __future__ import annotations

import contextlib

from queue_operator import credentials


def cli() -> None:
    lean = not credentials.needs_kubernetes_library()
    with credentials.kubernetes_library_hidden() if lean else contextlib.nullcontext():
        from queue_operator.main import cli as run  # noqa: PLC0415 - after hiding the library
    run()


if __name__ == "__main__":
    cli()
