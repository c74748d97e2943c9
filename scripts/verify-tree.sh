#!/usr/bin/env bash
# verify-tree.sh: the mirror invariant. For each configuration, a fresh
# checkout from the pristine source with its series applied must have exactly
# the recorded tree hash; stock must be the pinned upstream itself.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/LLAMA_VERSION"
. "$ROOT/scripts/series-lib.sh"
patches=${LLAMA_PATCHES:-$ROOT/patches}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

bad=0
for paged in off on; do
    if [ "$paged" = on ]; then recorded=$(series_recorded_tree "$patches/paged"); else recorded=$(series_recorded_tree "$patches"); fi
    got=$(LLAMA_PAGED=$paged LLAMA_CHECKOUT="$tmp/$paged" "$ROOT/prepare.sh" 2>"$tmp/log" | tail -n 1) ||
        { cat "$tmp/log" >&2; bad=1; continue; }
    if [ "$got" = "$recorded" ]; then
        echo "verify-tree: LLAMA_PAGED=$paged: $got (recorded)"
    else
        echo "verify-tree: LLAMA_PAGED=$paged: got $got, recorded $recorded" >&2
        bad=1
    fi
    if [ "$paged" = off ] && [ -z "$(series_list "$patches")" ] && [ "$got" != "$LLAMA_TREE" ]; then
        echo "verify-tree: stock tree $got is not the pin $LLAMA_TREE" >&2
        bad=1
    fi
done
exit "$bad"
