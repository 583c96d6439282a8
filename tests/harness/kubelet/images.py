"""Which local executable stands in for a container's image (docs/e2e.md says why not the images).

Building and running the images with buildah takes minutes on this machine, so a container
runs the executable its image would run: the project's image runs the virtualenv's entry
points, the beanstalkd and Redis images run Debian's binaries.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from harness import tools

VENV_BIN = Path(sys.executable).parent

# An image's ENTRYPOINT, by a word of its repository (images/*/Containerfile, the Redis image).
ENTRYPOINTS = {"queue-operator": "queue-operator", "beanstalkd": "beanstalkd", "redis": "redis-server"}


def entrypoint(image: str) -> str:
    repository = image.split("@", maxsplit=1)[0].rsplit(":", 1)[0].rsplit("/", 1)[-1]
    for word, command in ENTRYPOINTS.items():
        if word in repository:
            return command
    raise ValueError(f"no local stand-in for image {image!r} (a container needs a command)")


def executable(command: str) -> str:
    """The local file that runs ``command`` (a container's command[0])."""
    if command in ("python", "python3"):
        return sys.executable
    if (VENV_BIN / command).exists():
        return str(VENV_BIN / command)
    if command == "beanstalkd":
        return tools.beanstalkd()
    if command == "redis-server":
        return tools.redis_server()
    return shutil.which(command) or command
