#!/bin/sh
# Builds build/epollmux_<version>_all.deb with plain dpkg-deb (no debhelper needed): the package under
# /usr/lib/python3/dist-packages, /usr/bin/epollmux, the units, /etc/epollmux/epollmux.conf as a conffile,
# man pages, bash completion, copyright and changelog; maintainer scripts from this directory.
# Usage: packaging/deb/build.sh [build]   (from anywhere; writes into the repository's build/)
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/epollmux/__init__.py")
OUT="$REPO/build"
ROOT="$OUT/deb-root"
DEB="$OUT/epollmux_${VERSION}_all.deb"

rm -rf "$ROOT"
mkdir -p "$ROOT/DEBIAN" "$ROOT/usr/bin" "$ROOT/usr/lib/python3/dist-packages" "$ROOT/lib/systemd/system" \
         "$ROOT/etc/epollmux" "$ROOT/usr/share/man/man8" "$ROOT/usr/share/man/man5" \
         "$ROOT/usr/share/bash-completion/completions" "$ROOT/usr/share/doc/epollmux"

# the Python package: sources only (python3 compiles them at install, see postinst)
(cd "$REPO" && find epollmux -name '*.py' -o -name configspec.ini) | while read -r f; do
    install -D -m 644 "$REPO/$f" "$ROOT/usr/lib/python3/dist-packages/$f"
done
cat > "$ROOT/usr/bin/epollmux" <<'PY'
#!/usr/bin/python3
import sys

from epollmux.cli import main

sys.exit(main())
PY
chmod 755 "$ROOT/usr/bin/epollmux"

for unit in epollmux.service epollmux.socket; do
    sed -e 's|@PREFIX@/etc/|/etc/|g' -e 's|@PREFIX@|/usr|g' "$REPO/etc/$unit" > "$ROOT/lib/systemd/system/$unit"
    chmod 644 "$ROOT/lib/systemd/system/$unit"
done
install -m 644 "$REPO/etc/epollmux.conf" "$ROOT/etc/epollmux/epollmux.conf"
gzip -9n < "$REPO/doc/epollmux.8" > "$ROOT/usr/share/man/man8/epollmux.8.gz"
gzip -9n < "$REPO/doc/epollmux.conf.5" > "$ROOT/usr/share/man/man5/epollmux.conf.5.gz"
install -m 644 "$REPO/doc/epollmux.bash-completion" "$ROOT/usr/share/bash-completion/completions/epollmux"
install -m 644 "$HERE/copyright" "$ROOT/usr/share/doc/epollmux/copyright"
install -m 644 "$REPO/epollmux/configspec.ini" "$ROOT/usr/share/doc/epollmux/configspec.ini"
gzip -9n < "$HERE/changelog" > "$ROOT/usr/share/doc/epollmux/changelog.gz"
chmod 644 "$ROOT/usr/share/man/man8/epollmux.8.gz" "$ROOT/usr/share/man/man5/epollmux.conf.5.gz" \
          "$ROOT/usr/share/doc/epollmux/changelog.gz"

for script in postinst prerm postrm; do
    install -m 755 "$HERE/$script" "$ROOT/DEBIAN/$script"
done
echo /etc/epollmux/epollmux.conf > "$ROOT/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@SIZE@/$SIZE/" "$HERE/control" > "$ROOT/DEBIAN/control"
(cd "$ROOT" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) > "$ROOT/DEBIAN/md5sums"
chmod 644 "$ROOT/DEBIAN/control" "$ROOT/DEBIAN/conffiles" "$ROOT/DEBIAN/md5sums"
find "$ROOT" -type d -exec chmod 755 {} +

fakeroot dpkg-deb --build -Zxz "$ROOT" "$DEB" >/dev/null
echo "$DEB"
