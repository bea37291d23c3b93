# scripts/lib/debian13.sh: sourced by scripts/test_debian13.sh and scripts/build_debian13_cuda.sh.
# Makes a Debian 13 ("trixie") root with debootstrap from Debian's archive, mounts /proc, /dev and
# the source tree (read-only, at /src) into it, and unmounts them on exit whatever happens
# (a normal end, an error under set -e, Ctrl-C, SIGTERM). Needs root.
#
#   d13_begin ROOT                               traps: on exit or signal, stop the command running
#                                                inside and unmount everything under ROOT
#   d13_make_root ROOT "COMPONENTS" PACKAGE...   debootstrap + apt-get install (reused when ROOT's
#                                                stamp says the same components and packages);
#                                                D13_PREPARE, if set, runs inside before the install
#   d13_mount ROOT SRC                           mounts /proc, /dev, and SRC read-only at /src
#   d13_run ROOT 'COMMAND'                       runs bash -c COMMAND inside, clean environment
#
# A command inside runs in its own process group, in the background, and the script waits for it:
# bash runs a trap only once its foreground child ends, so a SIGTERM would otherwise wait for a
# whole build. The trap ends that group first, then unmounts.

# Debian's archive as this machine's apt is set up to reach it (DEBIAN13_MIRROR overrides).
d13_mirror() {
  if [ -n "${DEBIAN13_MIRROR:-}" ]; then echo "$DEBIAN13_MIRROR"; return; fi
  local uri
  uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -E '/debian/?$' | head -1 || true)
  if [ -z "$uri" ]; then
    uri=$(grep -hsE '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -E '/debian/?$' | head -1 || true)
  fi
  echo "$uri"  # empty: debootstrap's own default
}

# Every mount point under ROOT, deepest first.
d13_mounts_under() {
  awk -v r="$1" '$2 == r || index($2, r "/") == 1 {print $2}' /proc/self/mounts | sort -r
}

d13_unmount() {
  local root=$1 m
  for m in $(d13_mounts_under "$root"); do
    umount "$m" 2>/dev/null || umount -l "$m" || echo "debian13: could not unmount $m" >&2
  done
}

D13_CHILD=""
d13_stop_child() {
  if [ -n "$D13_CHILD" ]; then
    kill -TERM -- "-$D13_CHILD" 2>/dev/null || true
    wait "$D13_CHILD" 2>/dev/null || true
    D13_CHILD=""
  fi
}

d13_begin() {
  # shellcheck disable=SC2064  # expand ROOT now
  trap "d13_stop_child; d13_unmount '$1'" EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# d13_run ROOT COMMAND: COMMAND (one string) under bash in the root, in its own process group.
d13_run() {
  local root=$1 rc=0
  shift
  setsid chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive ${GRADCAM_TEST_QUICK:+GRADCAM_TEST_QUICK=$GRADCAM_TEST_QUICK} \
    bash -euo pipefail -c "$*" &
  D13_CHILD=$!
  wait "$D13_CHILD" || rc=$?
  D13_CHILD=""
  return $rc
}

d13_make_root() {
  local root=$1 components=$2
  shift 2
  local stamp="trixie $components $* ${D13_PREPARE:-}"
  if [ -f "$root/.gradcam-stamp" ] && [ "$(cat "$root/.gradcam-stamp")" = "$stamp" ]; then
    echo "debian13: reusing $root ($stamp)"
    return
  fi
  d13_unmount "$root"
  if [ -n "$(d13_mounts_under "$root")" ]; then
    echo "debian13: $root still has mounts; refusing to delete it" >&2
    return 1
  fi
  rm -rf --one-file-system "$root"
  mkdir -p "$root"
  local mirror t0=$SECONDS
  mirror=$(d13_mirror)
  debootstrap --variant=minbase --components="${components// /,}" trixie "$root" $mirror > "$root.debootstrap.log" 2>&1 \
    || { tail -20 "$root.debootstrap.log" >&2; return 1; }
  echo "debian13: debootstrap $((SECONDS - t0)) s"
  t0=$SECONDS
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  mount -t proc proc "$root/proc"
  mount --bind /dev "$root/dev"
  d13_run "$root" "${D13_PREPARE:-true} && apt-get update -q > /dev/null && apt-get install -y -q --no-install-recommends $*" \
    > "$root.apt.log" 2>&1 || { tail -30 "$root.apt.log" >&2; d13_unmount "$root"; return 1; }
  d13_unmount "$root"
  echo "debian13: packages $((SECONDS - t0)) s"
  echo "$stamp" > "$root/.gradcam-stamp"
}

d13_mount() {
  local root=$1 src=$2
  mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
  mountpoint -q "$root/dev" || mount --bind /dev "$root/dev"
  mkdir -p "$root/src"
  mountpoint -q "$root/src" || mount --bind "$src" "$root/src"
  mount -o remount,bind,ro "$root/src" 2>/dev/null || echo "debian13: /src stays writable (remount refused)"
}
