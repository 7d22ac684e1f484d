#!/usr/bin/env bash
# Build the e2e testbed (etcd, kube-apiserver, kube-scheduler, kube-controller-manager, kubectl,
# kwok) from upstream Go modules into a cache outside the repository, so fresh clones and CI runs
# on the same machine reuse them. No downloaded binaries, no Docker: only the Go toolchain and the
# Go module proxy.
#
# `go install pkg@version` refuses k8s.io/kubernetes and go.etcd.io/etcd/server/v3 (their go.mod
# has replace directives), so each program is built inside a generated wrapper module where the
# upstream replaces do not apply; for kubernetes the wrapper maps every staging module
# k8s.io/<m> to its published k8s.io/<m> v0.Y.Z.
#
# Idempotent: only missing binaries are built. Prints the bin dir as its last line.
# Env: TESTBED_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/airflow-gpu-webhook/testbed),
#      TESTBED_COMPONENTS (default "etcd kube-apiserver kube-scheduler kube-controller-manager kwok
#      kubectl"),
#      TESTBED_GOFLAGS (extra go flags, e.g. -p=1), GO (the go binary).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/versions.env
source "$here/versions.env"

cache=${TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airflow-gpu-webhook/testbed}
bin=$cache/bin-$K8S_VERSION-$ETCD_VERSION-$KWOK_VERSION
components=${TESTBED_COMPONENTS:-etcd kube-apiserver kube-scheduler kube-controller-manager kwok kubectl}
go=${GO:-$(command -v go || echo /usr/local/go/bin/go)}

# Self-contained Go caches under $cache (it survives between CI runs; ~/go does not), writable
# module cache so `rm -rf $cache` works, no toolchain download, static binaries.
export GOTOOLCHAIN=local CGO_ENABLED=0
export GOMODCACHE=$cache/gomod GOCACHE=$cache/gobuild
export GOFLAGS="-trimpath -modcacherw -mod=mod ${TESTBED_GOFLAGS:-}"

log() { printf '[testbed/build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
missing() { [[ ! -x $bin/$1 ]] && [[ " $components " == *" $1 "* ]]; }

mkdir -p "$bin" "$cache/src"
exec 9>"$cache/build.lock"
flock 9 # one build at a time (parallel pytest sessions share the cache)

k8s_minor=${K8S_VERSION#v1.}; k8s_minor=${k8s_minor%%.*}
go_line=$("$go" env GOVERSION); go_line=${go_line#go} # wrapper modules claim the local toolchain
staging_version=v0.${K8S_VERSION#v1.}

# write_wrapper DIR MODULE REQUIRE_LINE [REPLACE_BLOCK]
write_wrapper() {
  mkdir -p "$1"
  if [[ ! -f $1/go.mod ]]; then
    printf 'module testbed.local/%s\n\ngo %s\n\nrequire %s\n%s' "$2" "$go_line" "$3" "${4:-}" >"$1/go.mod"
  fi
}

# go_build NAME VERSION WRAPPER_DIR PACKAGE LDFLAGS
go_build() {
  local name=$1 version=$2 dir=$3 pkg=$4 ldflags=$5 t0=$SECONDS
  log "building $name $version ..."
  (cd "$dir" && "$go" build -ldflags "-s -w $ldflags" -o "$bin/.$name.tmp" "$pkg")
  mv -f "$bin/.$name.tmp" "$bin/$name"
  log "building $name $version ... done in $((SECONDS - t0))s"
}

# --- etcd -------------------------------------------------------------------------------------
if missing etcd; then
  d=$cache/src/etcd-$ETCD_VERSION
  write_wrapper "$d" etcd "go.etcd.io/etcd/server/v3 $ETCD_VERSION"
  go_build etcd "$ETCD_VERSION" "$d" go.etcd.io/etcd/server/v3 ""
fi

# --- kubernetes -------------------------------------------------------------------------------
k8s_cmds=()
for c in kube-apiserver kube-scheduler kube-controller-manager kubectl; do missing "$c" && k8s_cmds+=("$c"); done
if ((${#k8s_cmds[@]})); then
  d=$cache/src/kubernetes-$K8S_VERSION
  if [[ ! -f $d/go.mod ]]; then
    t0=$SECONDS
    log "fetching k8s.io/kubernetes $K8S_VERSION go.mod ..."
    gomod=$(cd "$cache/src" && "$go" mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
      sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
    staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#\1#p' "$gomod")
    [[ -n $staging ]] || { log "no staging replaces found in $gomod"; exit 1; }
    replaces=$(printf '\nreplace (\n'; for m in $staging; do
      printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"; done; printf ')\n')
    write_wrapper "$d" kubernetes "k8s.io/kubernetes $K8S_VERSION" "$replaces"
    log "fetching k8s.io/kubernetes $K8S_VERSION go.mod ... done in $((SECONDS - t0))s ($(wc -w <<<"$staging") staging modules)"
  fi
  t0=$SECONDS
  log "downloading modules for ${k8s_cmds[*]} ..."
  pkgs=(); for c in "${k8s_cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  (cd "$d" && "$go" list -deps "${pkgs[@]}" >/dev/null)
  log "downloading modules for ${k8s_cmds[*]} ... done in $((SECONDS - t0))s"
  # Version stamp (as hack/lib/version.sh does), else the server reports v0.0.0.
  build_date=$(cd "$d" && "$go" list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)
  ld=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$build_date"
  done
  for c in "${k8s_cmds[@]}"; do go_build "$c" "$K8S_VERSION" "$d" "k8s.io/kubernetes/cmd/$c" "$ld"; done
fi

# --- kwok -------------------------------------------------------------------------------------
stages="node/fast/node-initialize node/heartbeat/node-heartbeat pod/fast/pod-ready pod/fast/pod-delete"
if missing kwok || [[ ! -d $bin/kwok-stages ]]; then
  d=$cache/src/kwok-$KWOK_VERSION
  write_wrapper "$d" kwok "sigs.k8s.io/kwok $KWOK_VERSION"
  if missing kwok; then
    go_build kwok "$KWOK_VERSION" "$d" sigs.k8s.io/kwok/cmd/kwok \
      "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
  fi
  # kwok v0.8 loads no stages by default: copy the upstream ones the harness passes with -c.
  src=$(cd "$d" && "$go" list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage
  rm -rf "$bin/.kwok-stages.tmp" && mkdir "$bin/.kwok-stages.tmp"
  for s in $stages; do cp "$src/$s.yaml" "$bin/.kwok-stages.tmp/"; done
  chmod -R u+w "$bin/.kwok-stages.tmp" && mv "$bin/.kwok-stages.tmp" "$bin/kwok-stages"
fi

for c in $components; do [[ -x $bin/$c ]] || { log "$c missing after build"; exit 1; }; done
echo "$bin"
