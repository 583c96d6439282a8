#!/usr/bin/env bash
# Regenerate the committed Python gRPC code from proto/ (run after editing a .proto).
set -euo pipefail
cd "$(dirname "$0")/.."
out=sidecar/queue_sidecar/proto
.venv/bin/python -m grpc_tools.protoc -I proto/queueoperator/v1 \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" proto/queueoperator/v1/queue.proto
# protoc writes an absolute import; make it relative so the package can live anywhere.
sed -i 's/^import queue_pb2 as queue__pb2/from . import queue_pb2 as queue__pb2/' "$out/queue_pb2_grpc.py"
