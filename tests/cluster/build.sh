#!/usr/bin/env bash
# Build the test control plane from Go modules: kube-apiserver, kube-controller-manager and kubectl
# (k8s.io/kubernetes), etcd (go.etcd.io/etcd/server/v3) and helm (helm.sh/helm/v4), nothing prebuilt.
#
#   bash tests/cluster/build.sh          # prints the folder that holds the binaries, last
#
# The binaries go to a cache folder outside the repository ($UNLEARNING_CLUSTER_CACHE, default
# ~/.cache/unlearning-cluster/<digest of go.mod, go.sum and cmd/>), so a second run reuses them and a change
# to the pinned versions builds afresh. Go's own module and build caches make rebuilds fast.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

command -v go >/dev/null || { echo "build.sh: the Go toolchain is missing (Go >= 1.26 is needed)" >&2; exit 1; }

kube_version=$(awk '$1 == "k8s.io/kubernetes" {print $2}' go.mod)
helm_version=$(awk '$1 == "helm.sh/helm/v4" {print $2}' go.mod)
digest=$(cat go.mod go.sum cmd/*/*.go | sha256sum | cut -c1-12)
cache=${UNLEARNING_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/unlearning-cluster}
bin="$cache/$kube_version-$digest"
binaries=(etcd kube-apiserver kube-controller-manager kubectl helm)

missing=0
for name in "${binaries[@]}"; do [ -x "$bin/$name" ] || missing=1; done
if [ "$missing" = 1 ]; then
  mkdir -p "$bin.partial"
  minor=${kube_version#v1.}
  minor=${minor%%.*}
  # What `make` would stamp into the binaries: the API server reports it, and helm checks charts against it.
  kube_ldflags=""
  for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X $package.gitVersion=$kube_version -X $package.gitMajor=1 -X $package.gitMinor=$minor"
    kube_ldflags+=" -X $package.gitTreeState=clean -X $package.buildDate=1970-01-01T00:00:00Z"
  done
  started=$(date +%s)
  echo "building Kubernetes $kube_version, etcd and helm $helm_version into $bin (minutes on a first build)" >&2
  export CGO_ENABLED=0
  go build -trimpath -ldflags "-s -w $kube_ldflags" -o "$bin.partial/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
  go build -trimpath -ldflags "-s -w" -o "$bin.partial/etcd" ./cmd/etcd
  go build -trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version" \
    -o "$bin.partial/helm" helm.sh/helm/v4/cmd/helm
  rm -rf "$bin"
  mv "$bin.partial" "$bin"
  echo "built in $(($(date +%s) - started)) s" >&2
fi

{
  # sed, not head: head closing the pipe early would kill the writer with SIGPIPE and, under pipefail, the script.
  "$bin/etcd" --version | sed -n 1p
  "$bin/kube-apiserver" --version
  "$bin/kube-controller-manager" --version
  echo "kubectl $("$bin/kubectl" version --client -o json | sed -n 's/.*"gitVersion": "\([^"]*\)".*/\1/p' | sed -n 1p)"
  echo "helm $("$bin/helm" version --short)"
} >&2
echo "$bin"
