#!/usr/bin/env bash
# Build promtool (Prometheus' rule checker and rule unit-test runner) from its Go module into the
# testbed cache, as build.sh does for the control plane: no downloaded binaries, only the Go
# toolchain and the Go module proxy. tests/test_monitoring.py runs it on manifests/monitoring/.
#
# Unlike k8s.io/kubernetes, github.com/prometheus/prometheus has no replace or exclude directives
# in its go.mod, so a plain `go install module/cmd/promtool@version` works; no wrapper module.
# Its Go module versions are v0.<major><minor 2 digits>.<patch>: Prometheus v3.16.0 is v0.316.0.
#
# Idempotent: builds only when the binary is missing. Prints the binary's path as its last line.
# Env: TESTBED_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/airflow-gpu-webhook/testbed),
#      TESTBED_GOFLAGS (extra go flags, e.g. -p=1), GO (the go binary).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/versions.env
source "$here/versions.env"

cache=${TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airflow-gpu-webhook/testbed}
bin=$cache/bin-prometheus-$PROMETHEUS_VERSION
go=${GO:-$(command -v go || echo /usr/local/go/bin/go)}

# The same self-contained caches as build.sh: shared module and build caches under $cache.
export GOTOOLCHAIN=local CGO_ENABLED=0
export GOMODCACHE=$cache/gomod GOCACHE=$cache/gobuild
export GOFLAGS="-trimpath -modcacherw ${TESTBED_GOFLAGS:-}"

log() { printf '[testbed/build-promtool %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

mkdir -p "$bin"
exec 9>"$cache/build.lock"
flock 9 # one build at a time (parallel pytest sessions share the cache)

if [[ ! -x $bin/promtool ]]; then
  module_version=v0.$(printf '%d%02d.%d' $(tr . ' ' <<<"${PROMETHEUS_VERSION#v}"))
  t0=$SECONDS
  log "building promtool $PROMETHEUS_VERSION (github.com/prometheus/prometheus $module_version) ..."
  rm -rf "$bin/.tmp" && mkdir "$bin/.tmp"
  # `promtool --version` reports the release, as Prometheus' own builds (promu) stamp it.
  GOBIN=$bin/.tmp "$go" install \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_VERSION#v}" \
    "github.com/prometheus/prometheus/cmd/promtool@$module_version"
  mv -f "$bin/.tmp/promtool" "$bin/promtool" && rmdir "$bin/.tmp"
  log "building promtool $PROMETHEUS_VERSION ... done in $((SECONDS - t0))s"
fi

"$bin/promtool" --version >/dev/null
echo "$bin/promtool"
