#!/usr/bin/env bash
# Prepare compose/wheels: the ctlab wheel and a wheel for each of its
# dependencies, built on this host with pip (from the package index pip is
# configured to use, or from pip's cache). The image build then installs from
# this directory only (`pip install --no-index`), so `docker build` needs no
# network at all.
#
#   compose/prepare-wheels.sh [--force]
#
# The wheels must suit the image's Python (Debian bookworm: CPython 3.11,
# glibc 2.36, this machine's architecture): run it with a Python 3.11 on a
# glibc Linux of the same architecture (set PYTHON=... to choose one).
# Prefers the versions of the dependencies installed in that Python (the
# ones the test suite ran with). Skips the work when the wheels are newer
# than every source file (--force rebuilds them).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT=$HERE/wheels
PY=${PYTHON:-python3}
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

die() { echo "prepare-wheels: $*" >&2; exit 1; }

ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') ||
    die "no Python at $PY"
[ "$ver" = 3.11 ] || die "$PY is Python $ver; the image runs 3.11 (set PYTHON=python3.11)"

stamp=$OUT/.complete
if [ "$FORCE" = 0 ] && [ -f "$stamp" ] &&
   [ -z "$(find "$REPO/pyproject.toml" "$REPO/node" "$REPO/syncbus" "$REPO/scenarios" \
              -newer "$stamp" -type f \( -name '*.py' -o -name '*.toml' -o -name '*.yaml' \
              -o -name '*.tc' -o -name '*.json' \) -print -quit)" ]; then
    echo "prepare-wheels: $OUT is up to date (--force rebuilds it)"
    exit 0
fi

rm -rf "$OUT"
mkdir -p "$OUT"
start=$(date +%s)
# A clean copy of the sources: building in place would leave build/ and
# *.egg-info in the checkout.
SRC=$(mktemp -d -t ctlab-src.XXXXXX)
trap 'rm -rf "$SRC"' EXIT
tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' \
    -c pyproject.toml README.md node syncbus scenarios | tar -C "$SRC" -x
# The dependency versions this interpreter has installed (the ones the test
# suite ran with) are preferred: they are constraints, not requirements.
"$PY" -m pip list --format=freeze --exclude-editable 2>/dev/null |
    grep -v -i -e '^ctlab==' -e '^pip==' -e '^setuptools==' -e '^wheel==' > "$SRC/constraints.txt" || true
"$PY" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$OUT" \
    --constraint "$SRC/constraints.txt" "$SRC"
ls "$OUT"/ctlab-*.whl >/dev/null 2>&1 || die "no ctlab wheel was built"
touch "$stamp"
echo "prepare-wheels: $(ls "$OUT"/*.whl | wc -l) wheels in $OUT ($(( $(date +%s) - start ))s)"
