#!/usr/bin/env bash
# check-cuda.sh: compile, for sm_90 and sm_121 (GB10), the CUDA translation
# units the paged series touches (and those including a touched header).
# There is no GPU here: this proves the CUDA code builds, not that it runs.
# Without nvcc it is skipped with a message.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/LLAMA_VERSION"
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
nvcc=${NVCC:-$CUDA_HOME/bin/nvcc}
archs=${CUDA_ARCHS:-90;121}
src=$ROOT/src/paged
build=$ROOT/build/check-cuda

if [ ! -x "$nvcc" ]; then
    echo "check-cuda: skipped: no nvcc at $nvcc (set NVCC or CUDA_HOME)"
    exit 0
fi

LLAMA_PAGED=on "$ROOT/prepare.sh" >/dev/null
cuda_dir=ggml/src/ggml-cuda

# Touched .cu files, plus the .cu files that include a touched .cuh.
mapfile -t touched < <(git -C "$src" diff --name-only "$LLAMA_TREE" HEAD -- "$cuda_dir/*.cu" "$cuda_dir/*.cuh")
units=()
for f in "${touched[@]}"; do
    case "$f" in
        *.cu)  units+=("$f") ;;
        *.cuh) mapfile -t -O "${#units[@]}" units < <(cd "$src" && grep -l "#include \"${f##*/}\"" "$cuda_dir"/*.cu) ;;
    esac
done
if [ "${#units[@]}" = 0 ]; then
    # Still prove the toolchain and flags work, on the op the series is about.
    units=("$cuda_dir/gated_delta_net.cu")
    echo "check-cuda: the series touches no CUDA source; compiling ${units[0]} as a toolchain check"
fi
mapfile -t units < <(printf '%s\n' "${units[@]}" | sort -u)

configure() {
    cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DGGML_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" "-DCMAKE_CUDA_ARCHITECTURES=$archs" \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
        > "$build.configure.log" 2>&1 || { tail -n 30 "$build.configure.log"; echo "check-cuda: configure failed" >&2; exit 1; }
}
[ -f "$build/build.ninja" ] || configure

# the object of each unit; a unit the build tree does not know yet (a file the series adds: the
# CUDA sources are globbed at configure time) configures once more
objects=()
for attempt in 1 2; do
    objects=()
    missing=""
    for u in "${units[@]}"; do
        obj=$(ninja -C "$build" -t targets all | sed -n "s|^\(.*${u##*/}\.o\): .*|\1|p" | head -n 1)
        if [ -n "$obj" ]; then objects+=("$obj"); else missing="$u"; fi
    done
    [ -z "$missing" ] && break
    [ "$attempt" = 1 ] || { echo "check-cuda: no build rule for $missing" >&2; exit 1; }
    configure
done
echo "check-cuda: compiling ${#objects[@]} unit(s) for sm ${archs}: ${units[*]}"
ninja -C "$build" -j "$(nproc)" "${objects[@]}"
echo "check-cuda: ok"
