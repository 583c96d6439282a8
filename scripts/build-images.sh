#!/usr/bin/env bash
# Build the project's two images with buildah (no Docker engine needed), from this repository:
#   localhost/queue-operator:<version>      operator, sidecar and queuectl (images/queue-operator)
#   localhost/beanstalkd:<beanstalkd tag>   Debian's beanstalkd, non-root (images/beanstalkd)
# Both images are FROM scratch: a Debian bookworm base only runs their build stage, which copies
# what the image runs into a root of its own (images/rootfs.sh). Where no registry is reachable
# (these machines), that base is made from Debian's packages with mmdebstrap and cached in
# .cache/images; PUBLIC_BASES=1 uses the public bases named in the Containerfiles instead.
# Prints each image's size and the build times.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
BEANSTALKD_TAG=$(sed -n 's/^DEFAULT_BEANSTALKD_TAG = "\(.*\)"/\1/p' operator/queue_operator/spec.py)
CACHE=${IMAGE_CACHE:-.cache/images}
BUILDAH=(buildah --storage-driver vfs)
BUD=(bud --isolation chroot --pull=never)

if ! command -v buildah >/dev/null || ! command -v mmdebstrap >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends buildah mmdebstrap uidmap >/dev/null
fi
mkdir -p "$CACHE"
started=$(date +%s)

# A local image from a Debian rootfs tarball, unless buildah already has it.
base_image() {  # NAME TARBALL PACKAGES
    local name=$1 tarball=$2 packages=$3
    if "${BUILDAH[@]}" inspect --type image "$name" >/dev/null 2>&1; then
        return
    fi
    if [ ! -s "$tarball" ]; then
        # Merged /usr by mmdebstrap's hook rather than the usrmerge package (which needs perl);
        # no docs, man pages, locales or apt lists.
        mmdebstrap --quiet --variant=minbase --include="$packages" \
            --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
            --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
            --dpkgopt='path-exclude=/usr/share/info/*' \
            --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*' \
            bookworm "${tarball%.tar}.part.tar"
        mv "${tarball%.tar}.part.tar" "$tarball"
    fi
    local container
    container=$("${BUILDAH[@]}" from scratch)
    "${BUILDAH[@]}" add "$container" "$tarball" / >/dev/null
    "${BUILDAH[@]}" commit --quiet "$container" "$name" >/dev/null
    "${BUILDAH[@]}" rm "$container" >/dev/null
}

if [ -n "${PUBLIC_BASES:-}" ]; then
    python_base=() beanstalkd_base=()
else
    # One base builds both images (beanstalkd's stage installs its package with apt); binutils
    # for strip. Named for its contents: a change of the list makes a new base, not a stale one.
    base_image localhost/queue-operator-build:bookworm-1 "$CACHE/bookworm-build-1.tar" \
        python3,python3-venv,ca-certificates,binutils
    python_base=(--build-arg BASE=localhost/queue-operator-build:bookworm-1)
    beanstalkd_base=("${python_base[@]}")
fi
bases_done=$(date +%s)

# The project and its dependencies as wheels, so the image build installs offline.
rm -rf build/wheels
python=.venv/bin/python
[ -x "$python" ] || python=python3
# async-timeout: redis needs it on Python < 3.11.3 (Debian bookworm has 3.11.2), which the
# environment markers hide from a newer host Python.
if ! "$python" -m pip wheel --quiet --wheel-dir build/wheels . "async-timeout>=4.0.3" 2>"$CACHE/wheels.log"; then
    cat "$CACHE/wheels.log" >&2
    exit 1
fi
wheels_done=$(date +%s)

"${BUILDAH[@]}" "${BUD[@]}" --quiet "${python_base[@]}" \
    -f images/queue-operator/Containerfile -t "localhost/queue-operator:$VERSION" . >/dev/null
operator_done=$(date +%s)
"${BUILDAH[@]}" "${BUD[@]}" --quiet "${beanstalkd_base[@]}" \
    -f images/beanstalkd/Containerfile -t "localhost/beanstalkd:$BEANSTALKD_TAG" images >/dev/null
finished=$(date +%s)

echo "image                                          size"
for image in "localhost/queue-operator:$VERSION" "localhost/beanstalkd:$BEANSTALKD_TAG"; do
    size=$("${BUILDAH[@]}" inspect --type image --format '{{.FromImage}}' "$image" >/dev/null 2>&1 && \
        "${BUILDAH[@]}" images --format '{{.Size}}' "$image" | head -1)
    printf '%-46s %s\n' "$image" "$size"
done
echo "bases $((bases_done - started)) s, wheels $((wheels_done - bases_done)) s," \
    "queue-operator $((operator_done - wheels_done)) s, beanstalkd $((finished - operator_done)) s," \
    "total $((finished - started)) s"
