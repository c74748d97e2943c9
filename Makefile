# llama-paged: pinned upstream llama.cpp + patch series, built per configuration.
#
#   make [build] LLAMA_PAGED=on|off BACKEND=cpu|cuda|hip|vulkan
#   make test            the gates (README: "Tests")
#   make bench           stock vs paged, same run (docs/BENCHMARKS.md)
#   make dev / make export-patches     the patch workflow (docs/DEVELOPING.md)
#
# Layout: src/<stock|paged>/ checkouts, build/<stock|paged>-<backend>/bin/.

include LLAMA_VERSION

LLAMA_PAGED ?= on
BACKEND     ?= cpu

ifeq ($(filter $(LLAMA_PAGED),on off),)
$(error LLAMA_PAGED must be 'on' or 'off', got '$(LLAMA_PAGED)')
endif

BACKEND_FLAGS_cpu    :=
BACKEND_FLAGS_cuda   := -DGGML_CUDA=ON
BACKEND_FLAGS_hip    := -DGGML_HIP=ON
BACKEND_FLAGS_vulkan := -DGGML_VULKAN=ON
ifeq ($(filter $(BACKEND),cpu cuda hip vulkan),)
$(error BACKEND must be one of cpu, cuda, hip, vulkan; got '$(BACKEND)')
endif

CONFIG    := $(if $(filter on,$(LLAMA_PAGED)),paged,stock)
SRC_DIR   := src/$(CONFIG)
BUILD_DIR := build/$(CONFIG)-$(BACKEND)

# Debian's interpreter: it is the one python3-pytest and matplotlib install into.
PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)
JOBS   ?= $(shell nproc)

# Only what the project runs; the series' own tests come with the paged series.
TARGETS := llama-server llama-completion llama-cli llama-batched-bench llama-bench \
           llama-quantize test-llama-archs test-backend-ops
PAGED_TEST_TARGETS := test-gdn-inplace test-gdn-cache-layouts test-recurrent-state-rollback

CMAKE_FLAGS := -G Ninja -DCMAKE_BUILD_TYPE=Release \
               -DLLAMA_BUILD_TESTS=ON -DLLAMA_OPENSSL=OFF \
               -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
               $(BACKEND_FLAGS_$(BACKEND))

# Relative paths in ccache keys: a fresh clone elsewhere hits the same cache.
export CCACHE_BASEDIR := $(CURDIR)

.PHONY: all build build-both prepare configure test test-fast check-series check-docs verify-tree \
        check-cuda sanitize dev export-patches clean clean-src help models bench-models serve serve-stop

all: build

help:
	@sed -n '2,9p' Makefile | sed 's/^# \{0,1\}//'

prepare:
	@LLAMA_PAGED=$(LLAMA_PAGED) ./prepare.sh >/dev/null

$(BUILD_DIR)/build.ninja:
	cmake -S $(SRC_DIR) -B $(BUILD_DIR) $(CMAKE_FLAGS)

# configure re-runs only when there is no build tree yet; ninja itself
# re-runs cmake when a CMakeLists.txt changes.
configure: prepare
	@$(MAKE) --no-print-directory $(BUILD_DIR)/build.ninja

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS) --target $(TARGETS) $(if $(filter paged,$(CONFIG)),$(PAGED_TEST_TARGETS))
	@echo "built $(CONFIG) ($(BACKEND)): $(BUILD_DIR)/bin/"

# Both configurations: the gates compare them.
build-both:
	@$(MAKE) --no-print-directory build LLAMA_PAGED=off
	@$(MAKE) --no-print-directory build LLAMA_PAGED=on

check-series:
	@scripts/check-series.sh

check-docs:
	@scripts/gen-knobs-doc.sh | diff -u docs/KNOBS.md - \
	  || { echo "docs/KNOBS.md is stale: run 'scripts/gen-knobs-doc.sh > docs/KNOBS.md'"; exit 1; }

verify-tree:
	@scripts/verify-tree.sh

check-cuda:
	@scripts/check-cuda.sh

dev:
	@scripts/dev.sh

export-patches:
	@scripts/export-patches.sh

# --- test models (verify/) ---------------------------------------------------
# Generated on demand into MODELS_DIR by the generator, linked against the stock
# build's libllama (the public API only); never committed.
MODELS_DIR   ?= .cache/models
STOCK_BIN    := build/stock-$(BACKEND)/bin
GEN_MODEL    := build/tools/gen-model
GEN_SRC      := $(firstword $(wildcard verify/gen-model.c verify/gen-model.cpp))
GATE_PRESETS := gate-llama gate-qwen3 gate-qwen3moe gate-qwen35 gate-qwen35moe gate-qwen3next
GATE_MODELS  := $(GATE_PRESETS:%=$(MODELS_DIR)/%.gguf)
BENCH_QUANTS := q8_0 q4_k_m
BENCH_MODEL_FILES := $(foreach p,bench-qwen35 bench-qwen35moe bench-llama,$(BENCH_QUANTS:%=$(MODELS_DIR)/$(p)-%.gguf))
QWEN35_VOCAB := src/stock/models/ggml-vocab-qwen35.gguf
GEN_COMPILER := $(if $(filter %.cpp,$(GEN_SRC)),$(CXX) -std=c++17,$(CC) -std=c11)

$(GEN_MODEL): $(GEN_SRC) $(STOCK_BIN)/libllama.so
	@mkdir -p $(@D)
	$(GEN_COMPILER) -O2 -Wall -Wextra -o $@ $< -Isrc/stock/include -Isrc/stock/ggml/include \
	    -L$(STOCK_BIN) -lllama -lggml -lggml-base -Wl,-rpath,$(CURDIR)/$(STOCK_BIN) -lm

$(STOCK_BIN)/libllama.so:
	@$(MAKE) --no-print-directory build LLAMA_PAGED=off

$(MODELS_DIR)/gate-%.gguf: $(GEN_MODEL)
	@mkdir -p $(@D)
	$(GEN_MODEL) --preset gate-$* --seed 1 -o $@

$(MODELS_DIR)/bench-%-f32.gguf: $(GEN_MODEL)
	@mkdir -p $(@D)
	$(GEN_MODEL) --preset bench-$* --seed 1 --vocab $(QWEN35_VOCAB) -o $@

# The f32 originals are intermediates: large, and only the quantized ones are used.
.INTERMEDIATE: $(foreach p,bench-qwen35 bench-qwen35moe bench-llama,$(MODELS_DIR)/$(p)-f32.gguf)
$(MODELS_DIR)/bench-%-q8_0.gguf: $(MODELS_DIR)/bench-%-f32.gguf
	$(STOCK_BIN)/llama-quantize $< $@ Q8_0 $(JOBS) > $@.log 2>&1 || { tail -n 20 $@.log; exit 1; }
$(MODELS_DIR)/bench-%-q4_k_m.gguf: $(MODELS_DIR)/bench-%-f32.gguf
	$(STOCK_BIN)/llama-quantize $< $@ Q4_K_M $(JOBS) > $@.log 2>&1 || { tail -n 20 $@.log; exit 1; }

models: $(GATE_MODELS)
bench-models: $(BENCH_MODEL_FILES)

# --- main job -------------------------------------------------------------------
MODEL ?= $(MODELS_DIR)/bench-qwen35-q8_0.gguf

serve: build
	@if [ "$(MODEL)" = "$(MODELS_DIR)/bench-qwen35-q8_0.gguf" ]; then $(MAKE) --no-print-directory $(MODEL); fi
	@MODEL=$(MODEL) scripts/serve.sh

serve-stop:
	@scripts/serve.sh stop

# --- benchmarks (bench/bench.mk: make bench, make bench-smoke) -------------------
include bench/bench.mk

# --- sanitizers -----------------------------------------------------------------
# The series' op test under AddressSanitizer and UBSan: the in-place forms alias their
# source and destination and index a scratch area, exactly where memory bugs hide.
# Only ggml is built (test-gdn-inplace needs nothing else), in its own build dir.
SAN_DIR   := build/sanitize-cpu
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

sanitize:
	@LLAMA_PAGED=on ./prepare.sh >/dev/null
	@test -f $(SAN_DIR)/build.ninja || cmake -S src/paged -B $(SAN_DIR) -G Ninja \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGGML_SANITIZE_ADDRESS=ON -DGGML_SANITIZE_UNDEFINED=ON \
	  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF >/dev/null
	cmake --build $(SAN_DIR) -j $(JOBS) --target ggml
	$(CXX) -std=c++17 -O1 -g $(SAN_FLAGS) -Isrc/paged/ggml/include src/paged/tests/test-gdn-inplace.cpp \
	  -L$(SAN_DIR)/bin -lggml -lggml-base -lggml-cpu -Wl,-rpath,$(abspath $(SAN_DIR)/bin) \
	  -o $(SAN_DIR)/bin/test-gdn-inplace
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  $(SAN_DIR)/bin/test-gdn-inplace

# --- tests ----------------------------------------------------------------------
test: check-series check-docs build-both verify-tree check-cuda sanitize models
	MODELS_DIR=$(abspath $(MODELS_DIR)) $(PYTHON) -m pytest -ra tests/

# The orchestrator tests only: no build needed.
test-fast: check-series check-docs
	$(PYTHON) -m pytest -ra tests/test_prepare.py tests/test_series.py

clean:
	rm -rf build

# Deletes the prepared checkouts. prepare.sh refuses to touch a checkout with
# local changes; this is the explicit way to discard them (src/dev included).
clean-src:
	@for d in src/*/; do [ -d "$$d" ] && echo "removing $$d"; done; rm -rf src
