#!/usr/bin/env bash
# check-windows.sh: a syntax check, with MinGW-w64's g++/gcc (Windows headers, _WIN32), of the
# C and C++ files the paged series touches, against stock's own: a file that stock's tree passes
# and the series' fails is an error (a Windows build would break); one that fails on both (a
# MinGW header older than upstream needs) is reported and left. CPU and common code only: the
# other backends need their SDKs (check-cuda compiles the CUDA files). No linking, no run.
# Without MinGW-w64 (Debian: g++-mingw-w64-x86-64-posix) it is skipped with a message.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/LLAMA_VERSION"
cxx=${MINGW_CXX:-x86_64-w64-mingw32-g++-posix}
cc=${MINGW_CC:-x86_64-w64-mingw32-gcc-posix}

if ! command -v "$cxx" >/dev/null 2>&1 || ! command -v "$cc" >/dev/null 2>&1; then
    echo "check-windows: skipped: no $cxx / $cc (Debian: apt-get install g++-mingw-w64-x86-64-posix)"
    exit 0
fi

LLAMA_PAGED=off "$ROOT/prepare.sh" >/dev/null
LLAMA_PAGED=on "$ROOT/prepare.sh" >/dev/null
paged=$ROOT/src/paged
stock=$ROOT/src/stock

mapfile -t files < <(git -C "$paged" diff --name-only "$LLAMA_TREE" HEAD -- '*.c' '*.cpp' |
    grep -E '^(src|common|tools/server|tests|ggml/src/ggml-cpu/|ggml/src/[^/]+\.(c|cpp)$)' || true)

# compile one file of one tree; prints the first errors
check() {
    local tree=$1 file=$2 compiler std
    case "$file" in
        *.c)   compiler=$cc;  std=-std=c11 ;;
        *.cpp) compiler=$cxx; std=-std=c++17 ;;
    esac
    # ggml's own directories only for ggml's files: ggml-cpu has a common.h of its own
    local includes=(-Iinclude -Iggml/include -Icommon -Isrc -Itools/server -Itools/mtmd -Ivendor)
    case "$file" in
        ggml/*) includes=(-Iggml/include -Iggml/src -Iggml/src/ggml-cpu) ;;
    esac
    (cd "$tree" && "$compiler" "$std" -fsyntax-only -D_WIN32_WINNT=0x0A00 -DGGML_USE_CPU "${includes[@]}" \
        "$file" 2>&1 | grep -E "error" | head -3 || true)
}

failed=0 both=0
for f in "${files[@]}"; do
    errors=$(check "$paged" "$f")
    [ -z "$errors" ] && continue
    if [ -f "$stock/$f" ] && [ -n "$(check "$stock" "$f")" ]; then
        echo "check-windows: $f: fails on stock too (left): ${errors%%$'\n'*}"
        both=$((both + 1))
        continue
    fi
    echo "check-windows: $f: the series breaks it for Windows:"
    echo "$errors" | sed 's/^/    /'
    failed=$((failed + 1))
done
echo "check-windows: ${#files[@]} files the series touches; $failed broken by it, $both failing on stock too"
[ "$failed" = 0 ]
