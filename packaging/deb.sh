#!/bin/sh
# make deb: builds build/tug_VERSION_ARCH.deb with dpkg-deb from what `make install` puts
# under /usr. Depends lists the Debian packages of the shared libraries the binary names
# (its NEEDED entries, found with dpkg -S), and libwebsockets' libuv plugin, which
# libwebsockets loads at run time.
set -eu
cd "$(dirname "$0")/.."
version=$(./tug --version | awk '{ print $2 }')
arch=$(dpkg --print-architecture)
stage=build/deb/tug_${version}_${arch}
rm -rf "$stage"
make --no-print-directory install DESTDIR="$stage" PREFIX=/usr > /dev/null

depends=$(objdump -p tug | awk '/NEEDED/ { print $2 }' | while read -r lib; do
  path=$(ldconfig -p | awk -v lib="$lib" '$1 == lib { print $NF; exit }')
  [ -n "$path" ] || { echo "deb.sh: cannot find $lib" >&2; exit 1; }
  dpkg -S "$(readlink -f "$path")" 2> /dev/null | head -1 | cut -d: -f1 ||
    dpkg -S "$path" | head -1 | cut -d: -f1
done | sort -u)
depends="$depends libwebsockets-evlib-uv"
depends=$(for pkg in $depends; do
  printf '%s (>= %s)\n' "$pkg" "$(dpkg-query -W -f='${Version}' "$pkg" | sed 's/-[^-]*$//')"
done | paste -sd, | sed 's/,/, /g')

mkdir -p "$stage/DEBIAN"
cat > "$stage/DEBIAN/control" << CONTROL
Package: tug
Version: $version
Architecture: $arch
Maintainer: tug developers <tug@localhost>
Section: admin
Priority: optional
Depends: $depends
Recommends: lua-busted, lua5.4
Description: deployment playbooks written in Lua, on one event loop
 tug is one binary that embeds Lua 5.4 and runs deployment playbooks (blue-green,
 canary, migrations, rollbacks, incident runbooks) with plan, undo, a journal and
 resume, locks, and a simulated Kubernetes cluster to rehearse on. lua-busted runs
 the playbooks' specs (tug test).
CONTROL
dpkg-deb --root-owner-group --build "$stage" "build/tug_${version}_${arch}.deb" > /dev/null
echo "build/tug_${version}_${arch}.deb"
