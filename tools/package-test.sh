#!/usr/bin/env bash
# The Debian package on this machine, end to end (root; run by .ci/run after tools/package.sh):
#   dpkg -i; the files where they belong; systemd-analyze verify; man -l; the bash completion;
#   the unit's ExecStart, run by hand with the installed defaults file, in front of an NB
#   server started by Debian's ovn-ctl, serving ovn-nbctl and rewriting a migration;
#   ovn-appctl -t ovn-nb-proxy; OVN's logrotate rule rotating the proxy's log; dpkg -r keeping
#   only the conffiles; dpkg -P leaving nothing.
# OVN's directories (/run/ovn, /var/log/ovn, /var/lib/ovn) are private tmpfs mounts in a mount
# namespace of this script's own, so nothing of a real OVN on the machine is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
deb=${1:-$(ls -t target/debian/ovn-nb-proxy_*.deb 2>/dev/null | head -1)}
[ -n "$deb" ] && [ -f "$deb" ] || { echo "package-test: no package; run tools/package.sh first" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "package-test: needs root (dpkg -i)" >&2; exit 1; }
for t in dpkg systemd-analyze man unshare logrotate ovn-nbctl ovn-appctl /usr/share/ovn/scripts/ovn-ctl; do
    command -v "$t" >/dev/null || { echo "package-test: $t not found (tools/setup.sh installs it)" >&2; exit 1; }
done
if dpkg-query -W -f='${Status}' ovn-nb-proxy 2>/dev/null | grep -q installed; then
    echo "package-test: ovn-nb-proxy is already installed here; remove it first (dpkg -P ovn-nb-proxy)" >&2
    exit 1
fi
made=()
cleanup() {
    dpkg -P ovn-nb-proxy >/dev/null 2>&1 || true
    for d in "${made[@]}"; do rmdir "$d" 2>/dev/null || true; done
}
trap cleanup EXIT
fail() { echo "package-test: FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

step "dpkg -i $deb"
dpkg -i "$deb" >/dev/null
files=(/usr/bin/ovn-nb-proxy /lib/systemd/system/ovn-nb-proxy.service /etc/default/ovn-nb-proxy
    /etc/ovn/ovn-nb-proxy.toml /usr/share/man/man8/ovn-nb-proxy.8.gz
    /usr/share/bash-completion/completions/ovn-nb-proxy /usr/share/doc/ovn-nb-proxy/copyright)
for f in "${files[@]}"; do [ -e "$f" ] || fail "$f not installed"; done
dpkg -L ovn-nb-proxy | grep -c '^/.*[^/]$' | xargs echo "   files listed by dpkg -L:"
/usr/bin/ovn-nb-proxy --version
/usr/bin/ovn-nb-proxy check-config --config /etc/ovn/ovn-nb-proxy.toml

step "systemd-analyze verify ovn-nb-proxy.service"
systemd-analyze verify /lib/systemd/system/ovn-nb-proxy.service || fail "systemd-analyze verify"
grep -E '^(After|Wants|PartOf|EnvironmentFile|ExecStart|PIDFile)=' /lib/systemd/system/ovn-nb-proxy.service | sed 's/^/   /'

step "man -l ovn-nb-proxy.8.gz"
page=$(MANWIDTH=100 man -l /usr/share/man/man8/ovn-nb-proxy.8.gz 2>/dev/null)
for want in "CONTRACT" "CONTROL COMMANDS" "migrations/list" "vlog/reopen" "--upstream" "requested-chassis"; do
    grep -qF -- "$want" <<<"$page" || fail "the man page lacks $want"
done
echo "   $(wc -l <<<"$page") lines; sections: $(grep -E '^[A-Z][A-Z ]+$' <<<"$page" | paste -sd' ' -)"

step "bash completion"
bash -c 'source /usr/share/bash-completion/completions/ovn-nb-proxy && complete -p ovn-nb-proxy' \
    | sed 's/^/   /' || fail "the completion does not load"

step "the unit's ExecStart, by hand, in front of ovn-ctl's NB server"
for d in /run/ovn /var/log/ovn /var/lib/ovn; do
    [ -d "$d" ] || { mkdir -p "$d"; made+=("$d"); }
done
exec_line=$(sed -n 's/^ExecStart=//p' /lib/systemd/system/ovn-nb-proxy.service)
EXEC_LINE=$exec_line unshare --mount --propagation private bash -euo pipefail -c '
    for d in /run/ovn /var/log/ovn /var/lib/ovn; do mount -t tmpfs -o mode=0755 tmpfs "$d"; done
    proxy=
    finish() {
        [ -n "$proxy" ] && kill "$proxy" 2>/dev/null && wait "$proxy" 2>/dev/null || true
        /usr/share/ovn/scripts/ovn-ctl stop_nb_ovsdb >/dev/null 2>&1 || true
    }
    trap finish EXIT
    fail() { echo "package-test: FAIL: $*" >&2; exit 1; }
    /usr/share/ovn/scripts/ovn-ctl start_nb_ovsdb | sed "s/^/   ovn-ctl: /"
    set -a; . /etc/default/ovn-nb-proxy; set +a
    # systemd splits an unquoted $VAR on whitespace, as the shell does here.
    eval "$EXEC_LINE &"
    proxy=$!
    for _ in $(seq 100); do [ -S /var/run/ovn/ovnnb_proxy.sock ] && break; sleep 0.1; done
    [ -S /var/run/ovn/ovnnb_proxy.sock ] || fail "the proxy does not listen: $(cat /var/log/ovn/ovn-nb-proxy.log)"
    [ "$(cat /var/run/ovn/ovn-nb-proxy.pid)" = "$proxy" ] || fail "pidfile"
    db=unix:/var/run/ovn/ovnnb_proxy.sock
    direct=unix:/var/run/ovn/ovnnb_db.sock
    ovn-nbctl --db=$db ls-add sw0 -- lsp-add sw0 vm1 -- lsp-set-options vm1 requested-chassis=hv1
    ovn-nbctl --db=$db set Logical_Switch_Port vm1 external_ids:migration-destination=hv2
    opts=$(ovn-nbctl --db=$direct get Logical_Switch_Port vm1 options)
    echo "   through the proxy: tag set; the database holds options $opts"
    [ "$opts" = "{activation-strategy=rarp, requested-chassis=\"hv1,hv2\"}" ] || fail "not rewritten: $opts"
    ovn-appctl -t ovn-nb-proxy proxy/show | sed "s/^/   ovn-appctl: /"
    ovn-appctl -t ovn-nb-proxy migrations/list | grep -q "^vm1 " || fail "migrations/list"
    # OVN'"'"'s own logrotate rule: rotate /var/log/ovn/*.log, then vlog/reopen on every *.ctl.
    # As cron/systemd runs it: the global defaults of /etc/logrotate.conf (rotate 4, create),
    # then OVN'"'"'s rule; only that rule, so no other log of the machine is touched.
    state=$(mktemp) conf=$(mktemp)
    { grep -v "^include" /etc/logrotate.conf; cat /etc/logrotate.d/ovn-common; } > "$conf"
    logrotate -v -f -s "$state" "$conf" 2>&1 | grep -E "^rotating log|error" | sed "s/^/   logrotate: /" || true
    rm -f "$state" "$conf"
    ls /var/log/ovn | sed "s/^/   after logrotate: /"
    ls /var/log/ovn/ovn-nb-proxy.log.1* >/dev/null 2>&1 || fail "the proxy log was not rotated"
    ovn-nbctl --db=$db set Logical_Switch_Port vm1 external_ids:migration-phase=succeeded
    for _ in $(seq 50); do grep -q "vm1" /var/log/ovn/ovn-nb-proxy.log 2>/dev/null && break; sleep 0.1; done
    grep -q "vm1" /var/log/ovn/ovn-nb-proxy.log || fail "the proxy does not write to the reopened log"
    echo "   the reopened log: $(wc -l < /var/log/ovn/ovn-nb-proxy.log) lines after the rotation"
    kill -TERM "$proxy"; wait "$proxy" || fail "the proxy did not exit cleanly on SIGTERM"
    proxy=
    [ ! -e /var/run/ovn/ovn-nb-proxy.pid ] || fail "the pidfile is left behind"
    ! ls /var/run/ovn/ovn-nb-proxy.*.ctl >/dev/null 2>&1 || fail "the control socket is left behind"
    echo "   SIGTERM: exited 0, pidfile and control socket removed"
'

step "dpkg -r"
listed=$(dpkg -L ovn-nb-proxy | grep -v '^/\.$')
dpkg -r ovn-nb-proxy >/dev/null
left=$(for f in $listed; do [ -e "$f" ] && [ ! -d "$f" ] && echo "$f"; done || true)
[ "$left" = "$(printf '/etc/default/ovn-nb-proxy\n/etc/ovn/ovn-nb-proxy.toml')" ] || fail "after dpkg -r, left: $left"
echo "   left after dpkg -r (conffiles, as Debian keeps them): $(echo $left)"
step "dpkg -P"
dpkg -P ovn-nb-proxy >/dev/null
# A directory another package owns (/etc/ovn: ovn-common) stays, as it should.
left=$(for f in $listed; do [ -e "$f" ] && ! dpkg -S "$f" >/dev/null 2>&1 && echo "$f"; done || true)
[ -z "$left" ] || fail "after dpkg -P, left: $left"
echo "   nothing of the package left after dpkg -P"
echo "package-test: ok"
