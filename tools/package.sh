#!/usr/bin/env bash
# Builds the Debian package into target/debian/: the release binary, the systemd unit and its
# defaults file, the default config, the man page and the bash completion (both generated
# from the binary's own command line). Needs only dpkg-deb (dpkg) besides cargo.
#   tools/package.sh              # -> target/debian/ovn-nb-proxy_VERSION-1_ARCH.deb
set -euo pipefail
cd "$(dirname "$0")/.."
command -v dpkg-deb >/dev/null || { echo "package.sh: dpkg-deb not found (Debian's dpkg)" >&2; exit 1; }
cargo build --release --locked --quiet --bin ovn-nb-proxy
bin=target/release/ovn-nb-proxy
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
out=target/debian
root=$out/root
rm -rf "$root"
install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/default" \
    "$root/etc/ovn" "$root/usr/share/man/man8" "$root/usr/share/bash-completion/completions" \
    "$root/usr/share/doc/ovn-nb-proxy"
install -m 755 "$bin" "$root/usr/bin/ovn-nb-proxy"
strip --strip-debug "$root/usr/bin/ovn-nb-proxy"
install -m 644 packaging/ovn-nb-proxy.service "$root/lib/systemd/system/"
install -m 644 packaging/ovn-nb-proxy.default "$root/etc/default/ovn-nb-proxy"
install -m 644 packaging/ovn-nb-proxy.toml "$root/etc/ovn/ovn-nb-proxy.toml"
docs=$(mktemp -d)
trap 'rm -rf "$docs"' EXIT
"$bin" generate-docs "$docs" >/dev/null
gzip -9n < "$docs/ovn-nb-proxy.8" > "$root/usr/share/man/man8/ovn-nb-proxy.8.gz"
install -m 644 "$docs/ovn-nb-proxy.bash" "$root/usr/share/bash-completion/completions/ovn-nb-proxy"
install -m 644 packaging/debian/copyright "$root/usr/share/doc/ovn-nb-proxy/copyright"
install -m 644 packaging/debian/conffiles "$root/DEBIAN/conffiles"
install -m 755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$root/DEBIAN/"
# Shared libraries the binary links, as the Debian packages that ship them (dpkg -S), glibc
# with the newest symbol version the binary uses.
pkgs=()
for lib in $(ldd "$bin" | awk '/=> \//{print $3}'); do
    owner=$(dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" 2>/dev/null || true)
    [ -n "$owner" ] && pkgs+=("${owner%%:*}")
done
glibc=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
depends=$(printf '%s\n' "${pkgs[@]}" libc6 | sort -u | sed "s/^libc6$/libc6 (>= $glibc)/" | paste -sd, - | sed 's/,/, /g')
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version-1/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" \
    -e "s/@SIZE@/$size/" packaging/debian/control.in > "$root/DEBIAN/control"
deb="$out/ovn-nb-proxy_${version}-1_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
dpkg-deb --info "$deb" | sed -n 's/^ \(Package\|Version\|Depends\|Installed-Size\):/  \1:/p'
