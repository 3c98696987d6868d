#!/usr/bin/env bash
# Build ctlab's container image with no registry access at build time:
# the base image (build-base-image.sh, skipped when it exists), the wheels
# (prepare-wheels.sh, skipped when up to date), then `docker build`.
#
#   compose/build-image.sh [--tag ctlab:latest] [--base IMAGE]
#
# --base (or $CTLAB_BASE_IMAGE) uses another base image with Python 3.11 and
# python3-venv (e.g. one from a registry) instead of the debootstrapped one.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TAG=${CTLAB_IMAGE:-ctlab:latest}
BASE=${CTLAB_BASE_IMAGE:-}
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) TAG=$2; shift ;;
        --base) BASE=$2; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "build-image: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

if [ -z "$BASE" ]; then
    BASE=ctlab-base:bookworm
    "$HERE/build-base-image.sh" --tag "$BASE"
fi
"$HERE/prepare-wheels.sh"
start=$(date +%s)
old=$(docker image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
docker build --quiet --build-arg "BASE_IMAGE=$BASE" --label ctlab.image=ctlab \
    -t "$TAG" "$HERE" >/dev/null
new=$(docker image inspect --format '{{.Id}}' "$TAG")
if [ -n "$old" ] && [ "$old" != "$new" ]; then
    docker rmi "$old" >/dev/null 2>&1 || true  # the image it replaced (unless in use)
fi
echo "build-image: $TAG built from $BASE in $(( $(date +%s) - start ))s"
