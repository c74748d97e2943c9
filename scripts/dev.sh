#!/usr/bin/env bash
# dev.sh: the development checkout (src/dev) where each paged patch is one
# commit on branch paged-dev, on top of tag series-base (pin + base series).
# Edit there, then 'make export-patches'. See docs/DEVELOPING.md.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dev=${LLAMA_DEV:-$ROOT/src/dev}

if [ -d "$dev/.git" ]; then
    printf 'dev: %s exists, on %s; left as it is.\n' "$dev" "$(git -C "$dev" rev-parse --abbrev-ref HEAD)" >&2
    git -C "$dev" log --oneline series-base..HEAD >&2
    exit 0
fi

LLAMA_PAGED=on LLAMA_CHECKOUT=$dev "$ROOT/prepare.sh" >/dev/null
. "$ROOT/scripts/series-lib.sh"
n=$(series_list "$ROOT/patches/paged" | wc -l)
git -C "$dev" tag series-base "HEAD~$n"
git -C "$dev" checkout -q -b paged-dev
# The sentinel belongs to prepared checkouts; this one is yours to change.
rm -f "$dev/.git/llama-paged.sentinel"
cat >&2 <<MSG
dev: $dev is ready on branch paged-dev ($n paged patches on tag series-base).
  one logical change per commit, with the trailers docs/DEVELOPING.md lists;
  'make export-patches' regenerates patches/paged/ from it.
MSG
