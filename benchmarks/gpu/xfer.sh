#!/usr/bin/env bash
# Carry staged files to the device machine in as few calls as the 64 MiB limit allows.
# A call carries the whole working tree as well (tracked and untracked-not-ignored files: 27 MiB with the
# committed reports in December 2026, and growing), so staged folders whose own parts were cut for an empty tree
# (46 MiB) no longer fit. This packs any staged paths into ONE uncompressed tar, cut into parts of PART_BYTES,
# by default what the limit leaves beside the tree as it is now, less 1 MiB for the manifest and later commits,
# with a manifest naming every part and the tar's sha256. Pack again after the tree grew.
#
#   here:   bash benchmarks/gpu/xfer.sh pack .stage/xfer .stage/vllm .stage/seed-vllm .stage/llamacpp-cuda
#           (then carry [".stage/xfer/manifest", ".stage/xfer/partNN"], one part a call)
#   device: bash benchmarks/gpu/xfer.sh take   (in each call, right after the last: the machine stays warm 30 s)
#
# `take` keeps each carried part in /tmp/xfer; once every part in the manifest is there, it checks the sha256
# and unpacks the tar into the working tree's root, so the staged paths are where they were here (.stage/ is
# git-ignored, so later calls on the same machine keep them). Exit 0 when whole, 3 while parts are missing.
set -euo pipefail
cmd=${1:-}
case $cmd in
pack)
    dest=$2; shift 2
    mkdir -p "$dest" && rm -f "$dest"/part* "$dest"/manifest
    # the tree as the disk holds it (whole blocks): its apparent size (du -b) fell 2.8 MB short of what the
    # device tool counted in December 2026, and a part cut for that was refused
    tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | du -c -B1 --files0-from=- | tail -1 | cut -f1)
    part=${PART_BYTES:-$((64 * 1048576 - tree - 1048576))}
    echo "tree: $tree bytes; parts of $part bytes"
    tar -cf - "$@" | split -b "$part" -d -a 2 - "$dest/part"
    sum=$(cat "$dest"/part* | sha256sum | cut -d' ' -f1)
    { echo "sha256 $sum"; (cd "$dest" && ls part*); } > "$dest/manifest"
    ls -l "$dest"; cat "$dest/manifest"
    ;;
take)
    src=${XFER_DIR:-.stage/xfer}
    stash=/tmp/xfer
    mkdir -p "$stash"
    [ -f "$stash/.unpacked" ] && { echo "xfer: already unpacked"; exit 0; }
    cp "$src"/manifest "$stash/"
    for f in "$src"/part*; do [ -f "$f" ] && cp "$f" "$stash/"; done
    missing=$(tail -n +2 "$stash/manifest" | while read -r p; do [ -f "$stash/$p" ] || echo "$p"; done)
    if [ -n "$missing" ]; then echo "xfer: have $(ls "$stash" | grep -c ^part), missing:" $missing; exit 3; fi
    want=$(head -1 "$stash/manifest" | cut -d' ' -f2)
    got=$(tail -n +2 "$stash/manifest" | sed "s|^|$stash/|" | xargs cat | sha256sum | cut -d' ' -f1)
    [ "$want" = "$got" ] || { echo "xfer: sha256 mismatch ($got, want $want)"; exit 1; }
    tail -n +2 "$stash/manifest" | sed "s|^|$stash/|" | xargs cat | tar -xf -
    rm -f "$stash"/part*; touch "$stash/.unpacked"
    echo "xfer: whole, unpacked into $PWD"
    ;;
*)
    echo "usage: xfer.sh pack DEST PATH... | xfer.sh take" >&2; exit 2
    ;;
esac
