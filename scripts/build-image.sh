#!/usr/bin/env bash
# Build the webhook image without Docker (docs/image.md):
#   1. wheels on the host: the project (pure Python) and its dependencies as binary wheels for
#      the image's Python (CPython 3.11, manylinux up to glibc 2.36 = Debian 12) -> dist/wheels/
#   2. the base: the Dockerfile's public BASE if it is in local storage or can be pulled, else a
#      local Debian 12 made with debootstrap (cached as a tarball and a local image)
#   3. buildah bud --isolation chroot --build-arg BASE=..., skipped when an image built from the
#      same inputs (wheel contents, Dockerfile, .dockerignore, base image id) exists
# Progress and timings go to stderr; the last line on stdout is the image reference.
#
# Environment: BASE (use this base image, no pull or debootstrap), IMAGE (default
# localhost/airflow-gpu-webhook), IMAGE_CACHE (default ~/.cache/airflow-gpu-webhook/image),
# NO_PULL=1 (do not try to pull the public base), DEBIAN_MIRROR, PYTHON (runs pip; default the
# project's .venv/bin/python, else python3). With .venv present its installed versions constrain
# the wheels, so the image runs the dependency versions the tests ran with.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airflow-gpu-webhook/image}
IMAGE=${IMAGE:-localhost/airflow-gpu-webhook}
LOCAL_BASE=localhost/airflow-gpu-webhook-base:bookworm-python3
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PY_TAG=3.11 GLIBC_MINOR=36          # Debian 12: CPython 3.11, glibc 2.36
WHEELS=$ROOT/dist/wheels
PUBLIC_BASE=$(sed -n 's/^ARG BASE=//p' "$ROOT/Dockerfile")
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi

START=$SECONDS
say() { printf '[build-image %3ds] %s\n' $((SECONDS - START)) "$*" >&2; }
die() { printf 'build-image: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ prerequisites
[[ $(id -u) == 0 ]] || die "must run as root (buildah --isolation chroot and debootstrap need it); try: sudo $0"
missing=()
for tool in buildah debootstrap tar sha256sum flock; do command -v "$tool" >/dev/null || missing+=("$tool"); done
((${#missing[@]} == 0)) || die "missing: ${missing[*]}. On Debian 12: apt-get update && apt-get install -y buildah debootstrap (podman is not needed)"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip (set PYTHON=... or run make venv)"
[[ -n $PUBLIC_BASE ]] || die "no 'ARG BASE=' line in $ROOT/Dockerfile"

mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock 9 || die "cannot lock $CACHE/lock"
TMP=$(mktemp -d "$CACHE/tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# ------------------------------------------------------------------ 1. wheels
t=$SECONDS
say "wheels: the project and its dependencies for cp${PY_TAG/./} manylinux <= 2.$GLIBC_MINOR -> dist/wheels/"
rm -rf "$WHEELS" && mkdir -p "$WHEELS"
# Build the project from a clean copy: an in-tree build/ directory can carry stale modules.
mkdir "$TMP/src" && cp -r "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/webhook" "$TMP/src/"
find "$TMP/src" -name __pycache__ -prune -exec rm -rf {} +
"$PYTHON" -m pip wheel --no-deps --wheel-dir "$WHEELS" "$TMP/src" >"$TMP/wheel.log" 2>&1 \
  || { tail -30 "$TMP/wheel.log" >&2; die "building the project wheel failed (log above)"; }
project_wheel=$(ls "$WHEELS"/airflow_gpu_webhook-*.whl)
constraints=()
if [[ -x $ROOT/.venv/bin/python ]]; then
  "$ROOT/.venv/bin/python" -m pip freeze --exclude-editable | grep -v ' @ ' > "$TMP/constraints.txt" || true
  constraints=(--constraint "$TMP/constraints.txt")
fi
platforms=()
for ((minor = GLIBC_MINOR; minor >= 5; minor--)); do platforms+=(--platform "manylinux_2_${minor}_$(uname -m)"); done
"$PYTHON" -m pip download --quiet --dest "$WHEELS" --only-binary=:all: "${constraints[@]}" \
  --implementation cp --python-version "$PY_TAG" --abi "cp${PY_TAG/./}" "${platforms[@]}" "$project_wheel"
say "wheels: $(ls "$WHEELS" | wc -l) in $((SECONDS - t))s ($(du -sh "$WHEELS" | cut -f1)), no airflow extras"

# ------------------------------------------------------------------ 2. base
have_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }
make_local_base() {
  local tarball=$CACHE/base/bookworm-python3.tar rootfs=$TMP/rootfs
  if [[ ! -f $tarball ]]; then
    say "base: debootstrap --variant=minbase bookworm + python3 python3-venv (about a minute)"
    mkdir -p "$CACHE/base"
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$MIRROR" \
      > "$CACHE/base/debootstrap.log" 2>&1 || die "debootstrap failed; see $CACHE/base/debootstrap.log"
    # What slim images leave out: package caches and lists, documentation, man pages, locales.
    rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/{man,info,locale}/* \
           "$rootfs"/var/log/* "$rootfs"/debootstrap
    find "$rootfs"/usr/share/doc -type f ! -name copyright -delete
    tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  say "base: importing $tarball as $LOCAL_BASE"
  local c
  c=$(buildah from --quiet scratch)
  tar -C "$(buildah mount "$c")" --numeric-owner -xf "$tarball"
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd /bin/bash --label "org.opencontainers.image.description=debootstrap minbase bookworm + python3" "$c"
  buildah commit --quiet --rm "$c" "$LOCAL_BASE" >/dev/null
}

t=$SECONDS
if [[ -n ${BASE:-} ]]; then
  say "base: $BASE (from BASE)"
elif have_image "$PUBLIC_BASE"; then
  BASE=$PUBLIC_BASE; say "base: $BASE (local storage)"
elif [[ ${NO_PULL:-0} != 1 ]] && timeout 120 buildah pull --quiet "$PUBLIC_BASE" >/dev/null 2>"$TMP/pull.err"; then
  BASE=$PUBLIC_BASE; say "base: pulled $BASE"
else
  [[ ${NO_PULL:-0} == 1 ]] || say "base: cannot pull $PUBLIC_BASE: $(tail -1 "$TMP/pull.err")"
  have_image "$LOCAL_BASE" || make_local_base
  BASE=$LOCAL_BASE; say "base: $BASE, a local Debian 12 stand-in ($((SECONDS - t))s)"
fi
base_id=$(buildah inspect --type image --format '{{.FromImageID}}' "$BASE" 2>/dev/null) \
  || { buildah pull --quiet "$BASE" >/dev/null && base_id=$(buildah inspect --type image --format '{{.FromImageID}}' "$BASE"); } \
  || die "base image $BASE is neither in local storage nor pullable"

# ------------------------------------------------------------------ 3. the image
# Wheel *contents* (the project wheel's zip timestamps change on every build), the build files
# and the base decide the image; the same inputs reuse the image built before.
inputs=$(
  "$PYTHON" - "$WHEELS" <<'PY'
import hashlib, sys, zipfile
from pathlib import Path
for whl in sorted(Path(sys.argv[1]).glob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        for name in sorted(z.namelist()):
            print(whl.name, name, hashlib.sha256(z.read(name)).hexdigest())
PY
  sha256sum "$ROOT/Dockerfile" "$ROOT/.dockerignore" | cut -d' ' -f1
  echo "$base_id"
)
hash=$(sha256sum <<<"$inputs" | cut -c1-16)
ref=$IMAGE:in-$hash
version=$(basename "$project_wheel" | cut -d- -f2)
if have_image "$ref"; then
  say "image: $ref is up to date (same wheels, Dockerfile and base)"
else
  t=$SECONDS
  say "image: buildah bud --isolation chroot --build-arg BASE=$BASE"
  buildah bud --quiet --isolation chroot --pull=never --build-arg "BASE=$BASE" \
    --label "org.opencontainers.image.version=$version" --label "io.gpu-webhook.base=$BASE" \
    -t "$ref" -t "$IMAGE:$version" -t "$IMAGE:latest" -f "$ROOT/Dockerfile" "$ROOT" >"$TMP/bud.log" 2>&1 \
    || { tail -40 "$TMP/bud.log" >&2; die "buildah bud failed (log above)"; }
  say "image: built in $((SECONDS - t))s"
  # Drop this script's older builds (only our own in-* tags; the base stays).
  buildah images --format '{{.Name}}:{{.Tag}}' | grep -F "$IMAGE:in-" | grep -vxF "$ref" \
    | xargs -r buildah rmi >/dev/null 2>&1 || true
fi

if command -v podman >/dev/null; then   # sizes in bytes; buildah only prints rounded ones
  image_mb=$(( $(podman image inspect --format '{{.Size}}' "$ref") / 1000000 ))
  base_mb=$(( $(podman image inspect --format '{{.Size}}' "$BASE") / 1000000 ))
  say "size: $image_mb MB, base $base_mb MB: +$((image_mb - base_mb)) MB above the base"
else
  say "size: $(buildah images --format '{{.Size}}' "$ref"), base $(buildah images --format '{{.Size}}' "$BASE")"
fi
say "done in $((SECONDS - START))s: $ref"
echo "$ref"
