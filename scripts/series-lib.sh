# series-lib.sh: the patch directories' layout, shared by prepare.sh, the
# export target and the checks. Sourced, not run.
#
# A series directory holds NNNN-subject.patch files, a quilt-style `series`
# file naming them in order (so QUILT_PATCHES=DIR quilt push -a works), and
# `tree-hash`, the tree of pristine upstream plus every series up to this one.

# The trailer names of one kind (required or optional) from scripts/trailers.txt, the one
# list of the series' trailers (harness/trailers.py reads it too).
series_trailers() {
    awk -v kind="$1" '{ sub(/#.*/, "") } $1 == kind { print $2 }' "$(dirname "${BASH_SOURCE[0]}")/trailers.txt"
}

# The Knob: settings (NAME=VALUE) of the patches in the given series directories whose
# Recommended: trailer says yes, one per line: what 'make serve' turns on.
series_recommended_knobs() {
    local dir name tmp trailers
    tmp=$(mktemp -d)
    for dir in "$@"; do
        [ -f "$dir/series" ] || continue
        while read -r name; do
            git mailinfo "$tmp/msg" "$tmp/diff" < "$dir/$name" > /dev/null
            trailers=$(git interpret-trailers --parse < "$tmp/msg")
            grep -qi '^Recommended: yes' <<< "$trailers" || continue
            sed -n 's/^Knob: //p' <<< "$trailers" | grep -o '[A-Z][A-Z0-9_]*=[^ ,;]*' || true
        done < <(series_list "$dir")
    done
    rm -rf "$tmp"
}

# Patch names from DIR/series, in order (comments and blank lines skipped).
series_list() {
    sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$1/series"
}

# Checks that DIR/series and DIR/*.patch name the same files, in numeric
# order, without duplicates. Prints what disagrees and returns 1.
series_check() {
    local dir=$1 listed present bad=0 name
    if [ ! -f "$dir/series" ]; then
        printf 'series: %s has no series file\n' "$dir" >&2
        return 1
    fi
    listed=$(series_list "$dir")
    present=$(cd "$dir" && find . -maxdepth 1 -name '*.patch' -printf '%f\n' | LC_ALL=C sort)
    while read -r name; do
        [ -n "$name" ] || continue
        printf 'series: %s/%s is not listed in %s/series\n' "$dir" "$name" "$dir" >&2
        bad=1
    done < <(comm -13 <(printf '%s\n' "$listed" | LC_ALL=C sort -u) <(printf '%s\n' "$present"))
    while read -r name; do
        [ -n "$name" ] || continue
        printf 'series: %s/series lists %s, which does not exist\n' "$dir" "$name" >&2
        bad=1
    done < <(comm -23 <(printf '%s\n' "$listed" | LC_ALL=C sort -u) <(printf '%s\n' "$present"))
    while read -r name; do
        [ -n "$name" ] || continue
        printf 'series: %s/series lists %s more than once\n' "$dir" "$name" >&2
        bad=1
    done < <(printf '%s\n' "$listed" | LC_ALL=C sort | uniq -d)
    if [ "$bad" = 0 ] && [ "$listed" != "$(printf '%s\n' "$listed" | LC_ALL=C sort)" ]; then
        printf 'series: %s/series is not in numeric order\n' "$dir" >&2
        bad=1
    fi
    while read -r name; do
        [ -n "$name" ] || continue
        case "$name" in
            [0-9][0-9][0-9][0-9]-*.patch) ;;
            *) printf 'series: %s/%s is not named NNNN-subject.patch\n' "$dir" "$name" >&2; bad=1 ;;
        esac
    done <<< "$present"
    return "$bad"
}

series_recorded_tree() {
    local f=$1/tree-hash hash
    [ -f "$f" ] || return 1
    hash=$(tr -d '[:space:]' < "$f")
    [[ "$hash" =~ ^[0-9a-f]{40}$ ]] || return 1
    printf '%s\n' "$hash"
}

# One id for the pin plus the given series directories' exact content: the
# sentinel compares it to tell a changed series from an unchanged one.
series_fingerprint() {
    local dir name
    {
        printf 'upstream %s\n' "$LLAMA_TREE"
        for dir in "$@"; do
            printf 'dir %s\n' "${dir##*/}"
            cat "$dir/series" "$dir/tree-hash"
            while read -r name; do
                cat "$dir/$name"
            done < <(series_list "$dir")
        done
    } | sha256sum | cut -d' ' -f1
}
