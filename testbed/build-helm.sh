#!/usr/bin/env bash
# Build helm (the chart's lint, template and install tests, tests/e2e/test_chart.py and
# tests/test_chart.py) from its Go module into the testbed cache, as build.sh and
# build-promtool.sh do: no downloaded binaries, only the Go toolchain and the Go module proxy.
#
# helm.sh/helm/v3 has no replace directives in its go.mod, so a plain `go install
# module/cmd/helm@version` works; no wrapper module. The chart is apiVersion v2, which Helm 3 and
# Helm 4 both install; the tests pin Helm 3, the line most platform teams run today.
#
# Idempotent: builds only when the binary is missing. Prints the binary's path as its last line.
# Env: TESTBED_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/airflow-gpu-webhook/testbed),
#      TESTBED_GOFLAGS (extra go flags, e.g. -p=1), GO (the go binary).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/versions.env
source "$here/versions.env"

cache=${TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airflow-gpu-webhook/testbed}
bin=$cache/bin-helm-$HELM_VERSION
go=${GO:-$(command -v go || echo /usr/local/go/bin/go)}

# The same self-contained caches as build.sh: shared module and build caches under $cache.
export GOTOOLCHAIN=local CGO_ENABLED=0
export GOMODCACHE=$cache/gomod GOCACHE=$cache/gobuild
export GOFLAGS="-trimpath -modcacherw ${TESTBED_GOFLAGS:-}"

log() { printf '[testbed/build-helm %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

mkdir -p "$bin"
exec 9>"$cache/build.lock"
flock 9 # one build at a time (parallel pytest sessions share the cache)

if [[ ! -x $bin/helm ]]; then
  t0=$SECONDS
  log "building helm $HELM_VERSION ..."
  rm -rf "$bin/.tmp" && mkdir "$bin/.tmp"
  # Stamped as Helm's own Makefile does: `helm version` reports the release, and the Kubernetes
  # version that `helm template` and `helm lint` assume is that of the client-go it is built
  # with (else v1.20, which the chart's kubeVersion refuses).
  gomod=$(cd "$bin" && "$go" mod download -json "helm.sh/helm/v3@$HELM_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
  client_go=$(sed -n 's#^[[:space:]]*k8s.io/client-go v0\.\([0-9]*\)\..*#\1#p' "$gomod")
  [[ -n $client_go ]] || { log "no k8s.io/client-go in $gomod"; exit 1; }
  ld="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ld+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$client_go"
  done
  GOBIN=$bin/.tmp "$go" install -ldflags "-s -w $ld" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv -f "$bin/.tmp/helm" "$bin/helm" && rmdir "$bin/.tmp"
  log "building helm $HELM_VERSION ... done in $((SECONDS - t0))s"
fi

"$bin/helm" version --short >/dev/null
echo "$bin/helm"
