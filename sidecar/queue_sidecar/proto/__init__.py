"""Generated from proto/queueoperator/v1/queue.proto by scripts/gen-proto.sh; do not edit."""
