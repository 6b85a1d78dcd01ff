#!/usr/bin/env bash
# The container image, built and run here (root):
#   1. podman build of docker/scratch.Dockerfile: the release binary and the shared libraries
#      it links (no base image can be pulled on this machine);
#   2. the image's own filesystem (podman export) run with chroot: the proxy from the image in
#      front of an NB ovsdb-server on the host, driven by the host's ovn-nbctl, a migration
#      rewritten;
#   3. podman run, tried with crun and with runc, and what each says;
# then the container, the image and the files are removed (KEEP_IMAGE=1 keeps the image).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "image.sh: needs root (chroot)" >&2; exit 1; }
missing=()
for p in podman buildah crun runc; do command -v "$p" >/dev/null || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "image.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi
for t in ovsdb-server ovsdb-tool ovn-nbctl; do
    command -v "$t" >/dev/null || { echo "image.sh: $t not found (tools/setup.sh installs OVN)" >&2; exit 1; }
done
schema=/usr/share/ovn/ovn-nb.ovsschema
[ -f "$schema" ] || { echo "image.sh: $schema not found (Debian package ovn-common)" >&2; exit 1; }
tag=localhost/ovn-nb-proxy:scratch
work="$PWD/target/image"
cid= nb= proxy=
cleanup() {
    [ -n "$proxy" ] && kill "$proxy" 2>/dev/null || true
    [ -n "$nb" ] && kill "$nb" 2>/dev/null || true
    wait 2>/dev/null || true
    [ -n "$cid" ] && podman rm -f "$cid" >/dev/null 2>&1 || true
    [ "${KEEP_IMAGE:-0}" = 1 ] || podman rmi -f "$tag" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "image.sh: FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

step "the build context: the release binary and the libraries it links"
cargo build --release --locked --quiet --bin ovn-nb-proxy
rm -rf "$work"
root="$work/context/rootfs"
install -d "$root/usr/bin" "$root/run" "$root/tmp" "$root/var/run/ovn" "$root/etc"
install -m 755 target/release/ovn-nb-proxy "$root/usr/bin/ovn-nb-proxy"
strip --strip-debug "$root/usr/bin/ovn-nb-proxy"
for lib in $(ldd target/release/ovn-nb-proxy | grep -o '/[^ ]*'); do
    install -D -m 755 "$(readlink -f "$lib")" "$root$lib"
    echo "   $lib"
done
echo "root:x:0:0:root:/:/usr/bin/ovn-nb-proxy" > "$root/etc/passwd"

step "podman build -f docker/scratch.Dockerfile"
podman build -q -f docker/scratch.Dockerfile -t "$tag" "$work/context" | sed 's/^/   image id /'
size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "   $tag: $size bytes ($(( (size + 524288) / 1048576 )) MiB)"
podman image inspect --format '   entrypoint {{.Config.Entrypoint}}' "$tag"

step "the image's filesystem (podman export), run with chroot"
cid=$(podman create "$tag")
chroot_dir="$work/chroot"
mkdir -p "$chroot_dir"
podman export "$cid" | tar -x -C "$chroot_dir"
podman rm "$cid" >/dev/null
cid=
chroot "$chroot_dir" /usr/bin/ovn-nb-proxy --version | sed 's/^/   /'
# The NB server runs on the host; its socket is placed where the chrooted proxy sees it.
ovsdb-tool create "$work/nb.db" "$schema"
ovsdb-server -vconsole:off "$work/nb.db" --remote="punix:$chroot_dir/run/nb.sock" --unixctl="$work/nb.ctl" \
    --log-file="$work/nb.log" --no-chdir 2>/dev/null &
nb=$!
for _ in $(seq 100); do [ -S "$chroot_dir/run/nb.sock" ] && break; sleep 0.05; done
direct="unix:$chroot_dir/run/nb.sock"
ovn-nbctl --db="$direct" init
chroot "$chroot_dir" /usr/bin/ovn-nb-proxy --upstream=unix:/run/nb.sock --listen=punix:/run/proxy.sock \
    --unixctl=/run/proxy.ctl 2> "$work/proxy.log" &
proxy=$!
for _ in $(seq 100); do [ -S "$chroot_dir/run/proxy.sock" ] && break; sleep 0.05; done
[ -S "$chroot_dir/run/proxy.sock" ] || fail "the proxy from the image does not listen: $(cat "$work/proxy.log")"
db="unix:$chroot_dir/run/proxy.sock"
ovn-nbctl --db="$db" ls-add sw0 -- lsp-add sw0 vm1 -- lsp-set-options vm1 requested-chassis=hv1
ovn-nbctl --db="$db" set Logical_Switch_Port vm1 external_ids:migration-destination=hv2
opts=$(ovn-nbctl --db="$direct" get Logical_Switch_Port vm1 options)
echo "   host ovn-nbctl through the image's proxy: the database holds options $opts"
[ "$opts" = '{activation-strategy=rarp, requested-chassis="hv1,hv2"}' ] || fail "not rewritten: $opts"
ovs-appctl -t "$chroot_dir/run/proxy.ctl" proxy/show | sed -n 's/^/   ovs-appctl: /;1,6p'
kill -TERM "$proxy"; wait "$proxy" || fail "the proxy did not exit cleanly"
proxy=

step "podman run (crun, then runc; each as is, then with the host's own limits)"
# This sandbox lacks CAP_SYS_RESOURCE; podman asks the runtime to set RLIMIT_NOFILE and
# RLIMIT_NPROC in the container. Whatever happens is printed, not judged: the chroot above is
# what shows the image's contents run.
same=(--ulimit "nofile=$(ulimit -Sn):$(ulimit -Hn)" --ulimit "nproc=$(ulimit -Su):$(ulimit -Hu)")
for rt in crun runc; do
    for how in default host-limits; do
        extra=()
        [ "$how" = host-limits ] && extra=("${same[@]}")
        if out=$(timeout 60 podman run --rm --runtime "$rt" "${extra[@]}" --network none "$tag" --version 2>&1); then
            echo "   $rt, $how: runs: $out"
        else
            echo "   $rt, $how: does not run here: $(tail -1 <<<"$out")"
        fi
    done
done
echo "image.sh: ok ($tag, $size bytes)"
