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

if [ ! -f "$build/build.ninja" ]; then
    cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DGGML_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" "-DCMAKE_CUDA_ARCHITECTURES=$archs" \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
        > "$build.configure.log" 2>&1 || { tail -n 30 "$build.configure.log"; echo "check-cuda: configure failed" >&2; exit 1; }
fi

objects=()
for u in "${units[@]}"; do
    obj=$(ninja -C "$build" -t targets all | sed -n "s|^\(.*${u##*/}\.o\): .*|\1|p" | head -n 1)
    [ -n "$obj" ] || { echo "check-cuda: no build rule for $u" >&2; exit 1; }
    objects+=("$obj")
done
echo "check-cuda: compiling ${#objects[@]} unit(s) for sm ${archs}: ${units[*]}"
ninja -C "$build" -j "$(nproc)" "${objects[@]}"
echo "check-cuda: ok"
