#!/usr/bin/env bash
# The demo: a signed two-app pod on a real systemd, driven by podmgr and by systemd's
# own tools. On a host whose PID 1 is systemd it runs there; otherwise in a throwaway box.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}

if [[ "${1:-}" != --inside ]]; then
    if [[ -d /run/systemd/system ]]; then
        exec "$0" --inside
    fi
    echo "== PID 1 is not systemd here: booting a throwaway systemd box"
    exec "$py" "$repo/tests/box.py" run "demo-$$" -- "$0" --inside
fi

work=$(mktemp -d /tmp/podmgr-demo.XXXXXX)
trap 'gpgconf --homedir "$work/gnupg" --kill all 2>/dev/null; rm -rf "$work"' EXIT
state=$work/state        # a tmpfs in the box: overlay upper layers cannot live on overlayfs
export PODMGR_TRUST_DIR=$work/trust
export GNUPGHOME=$work/gnupg
podmgr() { echo "\$ podmgr $*" >&2; "$py" -m podmgr --dir "$state" "$@"; }
show() { echo "\$ $*" >&2; "$@"; }

echo "== Building the demo image from Debian's busybox-static, with podmgr image build"
layout=$work/layout
mkdir -p "$layout/rootfs/bin" "$layout/rootfs/etc" "$layout/rootfs/tmp"
cp /bin/busybox "$layout/rootfs/bin/busybox"
for a in sh echo sleep date hostname seq cat id; do ln -s busybox "$layout/rootfs/bin/$a"; done
echo 'root:x:0:0:root:/:/bin/sh' >"$layout/rootfs/etc/passwd"
echo 'root:x:0:' >"$layout/rootfs/etc/group"
cat >"$layout/manifest" <<'JSON'
{"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "demo.podmgr.io/busybox",
 "labels": [{"name": "version", "value": "1.0"}, {"name": "os", "value": "linux"},
            {"name": "arch", "value": "amd64"}],
 "app": {"exec": ["/bin/sh", "-c", "for i in $(seq 1 3); do echo \"$AC_APP_NAME says hello ($i)\"; sleep 1; done; sleep 600"],
         "user": "0", "group": "0"}}
JSON
podmgr image build "$layout" "$work/demo.aci"

echo "== Signing it with a throwaway key, and trusting that key for demo.podmgr.io"
mkdir -m 700 "$GNUPGHOME"
gpg --batch --quiet --pinentry-mode loopback --passphrase '' \
    --quick-gen-key 'podmgr demo <demo@podmgr.invalid>' ed25519 sign 1d 2>/dev/null
gpg --batch --quiet --armor --detach-sign "$work/demo.aci"
gpg --batch --quiet --armor --export >"$work/demo.pub"
podmgr trust --prefix demo.podmgr.io --skip-fingerprint-review "$work/demo.pub"
podmgr fetch "$work/demo.aci"

echo "== Starting a two-app pod (no podmgr process stays behind but, before systemd 257, podmgr-exec as each app's parent)"
uuid=$(podmgr start demo.podmgr.io/busybox --name greeter --- demo.podmgr.io/busybox --name helper)
hex=${uuid//-/}
sleep 3.5
podmgr list
podmgr status "$uuid"
podmgr logs "$uuid"
show systemctl status --no-pager --lines=3 "podmgr-$hex.slice" "podmgr-$hex-greeter.service" || true
show journalctl --no-pager -o cat -u "podmgr-$hex-helper.service"
show machinectl list --no-pager || true
echo "== Stopping and removing it"
podmgr stop "$uuid"
podmgr rm "$uuid"
podmgr list
echo "== Demo done."
