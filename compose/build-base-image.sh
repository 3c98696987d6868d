#!/usr/bin/env bash
# Build the base image of ctlab's container image without any image registry:
# debootstrap a minimal Debian bookworm (Python 3.11, Mosquitto, iproute2,
# iptables) into a temporary directory and `docker import` it.
#
#   compose/build-base-image.sh [--force] [--tag NAME] [--mirror URL]
#
# The Debian mirror is the one this machine's apt already uses for bookworm
# (read from /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list at run
# time), or --mirror URL / $CTLAB_DEBIAN_MIRROR. apt's HTTP proxy, if it has
# one, is used too. Needs root, debootstrap and a running Docker engine.
# Skips the build when the image exists (unless --force). Removes its
# temporary directory, also on failure.
set -euo pipefail

TAG=${CTLAB_BASE_IMAGE:-ctlab-base:bookworm}
SUITE=bookworm
MIRROR=${CTLAB_DEBIAN_MIRROR:-}
FORCE=0
PACKAGES=python3,python3-venv,mosquitto,iproute2,iptables,ca-certificates

while [ $# -gt 0 ]; do
    case "$1" in
        --force) FORCE=1 ;;
        --tag) TAG=$2; shift ;;
        --mirror) MIRROR=$2; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "build-base-image: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

die() { echo "build-base-image: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap)"
command -v debootstrap >/dev/null || die "needs debootstrap (Debian: apt-get install debootstrap)"
command -v docker >/dev/null || die "needs the docker CLI"
docker info >/dev/null 2>&1 || die "no Docker engine answers${DOCKER_HOST:+ at $DOCKER_HOST}"

if [ "$FORCE" = 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "build-base-image: $TAG exists (--force rebuilds it)"
    exit 0
fi

# The first apt source that carries $SUITE (deb822 .sources files, then the
# one-line format), the way this machine's apt reaches Debian.
find_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$SUITE" '
            function flush() {
                if (uris != "" && types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ")) {
                    split(uris, u, " "); print u[1]; found = 1; exit
                }
                uris = ""; suites = ""; types = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            tolower($1) == "types:"  { $1 = ""; types = $0 }
            tolower($1) == "uris:"   { $1 = ""; sub(/^ +/, ""); uris = $0 }
            tolower($1) == "suites:" { $1 = ""; suites = $0 }
            END { if (!found) flush() }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk -v suite="$SUITE" '
            $1 == "deb" {
                i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' "$f"
    done
}

if [ -z "$MIRROR" ]; then
    MIRROR=$(find_mirror | head -n1)
fi
[ -n "$MIRROR" ] || die "no apt source for Debian $SUITE on this machine: pass --mirror URL"

# apt's proxy (if any) for debootstrap's downloads
if [ -z "${http_proxy:-}" ] && command -v apt-config >/dev/null; then
    proxy=$(apt-config shell P Acquire::http::Proxy | sed -n "s/^P='\(.*\)'$/\1/p")
    if [ -n "$proxy" ]; then export http_proxy=$proxy; fi
fi

KEYRING=()
if [ -f /usr/share/keyrings/debian-archive-keyring.gpg ]; then
    KEYRING=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
fi

ROOT=$(mktemp -d -t ctlab-rootfs.XXXXXX)
cleanup() { rm -rf --one-file-system "$ROOT"; }
trap cleanup EXIT

echo "build-base-image: debootstrap $SUITE from $MIRROR into $ROOT"
start=$(date +%s)
debootstrap --variant=minbase "${KEYRING[@]}" --include="$PACKAGES" \
    "$SUITE" "$ROOT" "$MIRROR" > "$ROOT.log" 2>&1 || {
    tail -n 30 "$ROOT.log" >&2; rm -f "$ROOT.log"; die "debootstrap failed"; }
rm -f "$ROOT.log"

# Smaller image: no package caches, lists or docs.
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* \
       "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/locale/* \
       "$ROOT"/var/log/*.log "$ROOT"/var/log/apt/*

tar --numeric-owner -C "$ROOT" --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* -c . |
    docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' \
        -c 'LABEL org.opencontainers.image.title=ctlab-base ctlab.image=base' \
        -c 'CMD ["/bin/bash"]' \
        - "$TAG" >/dev/null
echo "build-base-image: $TAG built in $(( $(date +%s) - start ))s"
