#!/bin/sh
# Installs the Debian packages of vendor/debian-packages.txt for the given groups
# (build, test, bench) when they are missing. Quick when nothing is missing.
#   vendor/install.sh build test
set -eu
here=$(dirname "$0")
[ $# -gt 0 ] || set -- build test

wanted=$(awk -v groups=" $* " '!/^#/ && NF >= 3 && index(groups, " " $3 " ") { print $1 }' \
  "$here/debian-packages.txt")
missing=""
for pkg in $wanted; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = installed ] || missing="$missing $pkg"
done
case " $* " in *" test "*) wants_npm=1 ;; *) wants_npm=0 ;; esac
if [ "$wants_npm" = 1 ] && ! command -v npm > /dev/null; then
  missing="$missing nodejs npm"
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ -n "$missing" ]; then
  echo "vendor/install.sh: installing$missing" >&2
  # busted depends on "lua5.2 | lua": installing lua5.4 in the same command keeps Lua 5.2 out.
  case "$missing" in *lua-busted*) missing="$missing lua5.4" ;; esac
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >&2
  dpkg-query -W -f='vendor/install.sh: ${Package} ${Version}\n' $missing >&2
fi

# npm packages for the tests, into vendor/node/node_modules, when any is missing.
if [ "$wants_npm" = 1 ]; then
  npm_wanted=$(awk '!/^#/ && NF >= 2 { print $1 "@" $2 }' "$here/npm-packages.txt")
  for spec in $npm_wanted; do
    name=${spec%@*}
    if [ ! -f "$here/node/node_modules/$name/package.json" ]; then
      echo "vendor/install.sh: npm install $npm_wanted" >&2
      mkdir -p "$here/node"
      npm install --prefix "$here/node" --no-audit --no-fund --loglevel=error $npm_wanted >&2
      break
    fi
  done
fi
