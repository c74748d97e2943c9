#!/usr/bin/env bash
# check-series.sh: the patch directories are consistent: every series file
# matches its .patch files, every patch is an exported one (zero commit id,
# no signature, all trailers) and every tree-hash is well formed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/LLAMA_VERSION"
. "$ROOT/scripts/series-lib.sh"
patches=${LLAMA_PATCHES:-$ROOT/patches}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

bad=0
for dir in "$patches" "$patches/paged"; do
    series_check "$dir" || bad=1
    series_recorded_tree "$dir" >/dev/null ||
        { echo "series: $dir/tree-hash is missing or not a 40-hex tree hash" >&2; bad=1; }
    while read -r name; do
        f=$dir/$name
        [ -f "$f" ] || continue
        head -n 1 "$f" | grep -q '^From 0\{40\} ' ||
            { echo "series: $f: not exported with a zero commit id (make export-patches)" >&2; bad=1; }
        ! grep -q '^-- $' "$f" ||
            { echo "series: $f: carries a signature (export with --no-signature)" >&2; bad=1; }
        git mailinfo "$tmp/msg" "$tmp/diff" < "$f" > /dev/null
        trailers=$(git interpret-trailers --parse < "$tmp/msg")
        for t in $(series_trailers required); do
            grep -q "^$t: ." <<< "$trailers" || { echo "series: $f: no $t: trailer" >&2; bad=1; }
        done
    done < <(series_list "$dir" 2>/dev/null || true)
done
# The base series is empty by design (stock = pristine upstream).
[ "$(series_recorded_tree "$patches" 2>/dev/null)" = "$LLAMA_TREE" ] || [ -n "$(series_list "$patches")" ] ||
    { echo "series: $patches/tree-hash must be the pin $LLAMA_TREE while the base series is empty" >&2; bad=1; }
[ "$bad" = 0 ] && echo "series: ok" >&2
exit "$bad"
