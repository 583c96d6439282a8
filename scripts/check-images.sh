#!/usr/bin/env bash
# Check the images scripts/build-images.sh built, by running them with buildah:
# - queue-operator: `queue-operator --help`, `queuectl --help`, and `queue-sidecar --check` on
#   the example sidecar config pass, as the non-root user the image declares; every package and
#   extension module in it imports (the image is FROM scratch: a missing library shows here) from
#   bytecode compiled in the build, the `kubernetes` library (kept as bytecode only) loads a
#   kubeconfig, TLS finds the CA bundle, names resolve through /etc/hosts, and the sidecar
#   serves its health endpoints;
# - beanstalkd: serves a put and a reserve with its binlog on a mounted directory, and still has
#   the job after a restart.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
BEANSTALKD_TAG=$(sed -n 's/^DEFAULT_BEANSTALKD_TAG = "\(.*\)"/\1/p' operator/queue_operator/spec.py)
BUILDAH=(buildah --storage-driver vfs)
RUN=(run --isolation chroot)
work=$(mktemp -d)
containers=()
sidecar=
cleanup() {
    pkill -f "beanstalkd -l 127.0.0.1 -p $port" 2>/dev/null || true
    [ -z "$sidecar" ] || kill "$sidecar" 2>/dev/null || true
    for c in "${containers[@]}"; do "${BUILDAH[@]}" rm "$c" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
free_port() {
    .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port=$(free_port)
trap cleanup EXIT

operator=$("${BUILDAH[@]}" from --pull-never "localhost/queue-operator:$VERSION")
containers+=("$operator")
user=$("${BUILDAH[@]}" inspect --format '{{.OCIv1.Config.User}}' "$operator")
[ "$user" = "65532:65532" ] || { echo "queue-operator image runs as '$user', not 65532" >&2; exit 1; }
"${BUILDAH[@]}" "${RUN[@]}" "$operator" -- queue-operator --help | grep -q -- "--leader-elect"
"${BUILDAH[@]}" "${RUN[@]}" "$operator" -- queuectl --help | grep -q "delay"
"${BUILDAH[@]}" "${RUN[@]}" -v "$PWD/examples/sidecar:/config:ro" "$operator" -- \
    queue-sidecar --check --config /config/sidecar.yaml
cat >"$work/imports.py" <<'PY'
import getpass, importlib, importlib.util, os, pathlib, pkgutil, socket, ssl, sys, sysconfig
site = pathlib.Path(sysconfig.get_path("purelib"))
dynload = pathlib.Path(sysconfig.get_path("platstdlib")) / "lib-dynload"
names = {m.name for m in pkgutil.iter_modules([str(site)]) if not m.name.startswith("_")}
names |= {m.name for m in pkgutil.iter_modules([str(dynload)])}
for so in site.rglob("*.so"):  # each extension module, stripped in the build
    names.add(".".join(so.relative_to(site).with_suffix("").with_suffix("").parts))
names |= {"google.protobuf", "kubernetes.client", "queue_operator.entry", "queue_sidecar.main"}
for name in sorted(names):
    importlib.import_module(name)
# Compiled ahead: a read-only root would compile these on every start.
sources = [getattr(m, "__file__", None) or "" for m in list(sys.modules.values())]
sources = [f for f in sources if f.startswith((sys.prefix, sys.base_prefix)) and f.endswith(".py")]
uncompiled = [f for f in sources if not os.path.exists(importlib.util.cache_from_source(f))]
assert not uncompiled, f"no bytecode for {uncompiled[:5]}"
cas = ssl.create_default_context().cert_store_stats()["x509_ca"]
assert cas > 100, f"TLS sees {cas} CA certificates"
assert not sys.flags.optimize
assert socket.getaddrinfo("localhost", 11300)  # /etc/hosts through nsswitch.conf
assert (getpass.getuser(), os.path.expanduser("~")) == ("nonroot", "/home/nonroot")
print(f"{len(names)} packages import ({len(sys.modules)} modules, all precompiled); TLS sees {cas} CA certificates")
PY
cat >"$work/kubeconfig" <<'YAML'
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u, namespace: ns}}]
current-context: c
YAML
chmod a+r "$work/imports.py" "$work/kubeconfig"
chmod a+x "$work"
"${BUILDAH[@]}" "${RUN[@]}" -v "$work:/check:ro" "$operator" -- python3 /check/imports.py
"${BUILDAH[@]}" "${RUN[@]}" -v "$work:/check:ro" "$operator" -- python3 -c '
from queue_sidecar.ctl.kube import KubeSource
source = KubeSource(kubeconfig="/check/kubeconfig")
assert (source.context, source.namespace) == ("c", "ns"), (source.context, source.namespace)'

# The sidecar runs and serves: /healthz and /readyz answer 200, /v1/status reports its queue,
# while the app and the queue's broker are away (event loop, sockets, librdkafka's threads).
health_port=$(free_port)
cat >"$work/sidecar.yaml" <<YAML
app: {port: $(free_port)}
publish: {port: $(free_port)}
health: {port: $health_port, host: 127.0.0.1}
queues: [{kind: KafkaQueue, name: smoke, brokers: ["127.0.0.1:9"]}]
YAML
chmod a+r "$work/sidecar.yaml"
"${BUILDAH[@]}" "${RUN[@]}" -v "$work:/check:ro" "$operator" -- \
    queue-sidecar --config /check/sidecar.yaml >"$work/sidecar.log" 2>&1 &
sidecar=$!
if ! .venv/bin/python - "$health_port" <<'PY'; then
import json, sys, time, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
deadline = time.monotonic() + 30
while True:
    try:
        urllib.request.urlopen(f"{base}/healthz", timeout=2).read()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
assert json.load(urllib.request.urlopen(f"{base}/readyz", timeout=2)) == {"ready": True}
status = json.load(urllib.request.urlopen(f"{base}/v1/status", timeout=2))
assert "smoke" in status["queues"], status
PY
    cat "$work/sidecar.log" >&2
    exit 1
fi
kill "$sidecar"
wait "$sidecar" 2>/dev/null || true
sidecar=
echo "queue-operator image: queue-operator --help, queuectl --help, queue-sidecar --check pass;" \
    "everything imports; the kubernetes library reads a kubeconfig; the sidecar serves"

beanstalkd=$("${BUILDAH[@]}" from --pull-never "localhost/beanstalkd:$BEANSTALKD_TAG")
containers+=("$beanstalkd")
user=$("${BUILDAH[@]}" inspect --format '{{.OCIv1.Config.User}}' "$beanstalkd")
[ "$user" = "65534:65534" ] || { echo "beanstalkd image runs as '$user', not 65534" >&2; exit 1; }
mkdir -p "$work/binlog"
chown 65534:65534 "$work/binlog"
serve() {
    "${BUILDAH[@]}" "${RUN[@]}" -v "$work/binlog:/var/lib/beanstalkd" "$beanstalkd" -- \
        beanstalkd -l 127.0.0.1 -p "$port" -b /var/lib/beanstalkd >"$work/beanstalkd.log" 2>&1 &
}
stop() {
    pkill -f "beanstalkd -l 127.0.0.1 -p $port"
    wait || true
}
# Put a job (and see it reserved) before a restart; take it after: MODE put|take.
cat >"$work/jobs.py" <<'PY'
import sys, time, greenstalk
mode, port = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 20
while True:
    try:
        client = greenstalk.Client(("127.0.0.1", port), encoding=None)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
if mode == "put":
    client.put(b"survives a restart")
job = client.reserve(timeout=5)
assert job.body == b"survives a restart", job.body
client.release(job) if mode == "put" else client.delete(job)
PY
serve
.venv/bin/python "$work/jobs.py" put "$port"
stop
[ -n "$(ls "$work/binlog")" ] || { echo "beanstalkd wrote no binlog to the mounted directory" >&2; exit 1; }
serve
.venv/bin/python "$work/jobs.py" take "$port"
stop
echo "beanstalkd image: put and reserve, binlog on the mounted volume, the job survives a restart"
