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

# Both configurations' binaries for this BACKEND, computed once: the tests, the gates, the
# benchmarks and 'make serve' all take them from here (harness/paths.py computes the same
# from BACKEND for a tool run by hand).
STOCK_BUILD := build/stock-$(BACKEND)
PAGED_BUILD := build/paged-$(BACKEND)
export STOCK_BIN := $(abspath $(STOCK_BUILD)/bin)
export PAGED_BIN := $(abspath $(PAGED_BUILD)/bin)
export BACKEND

# Debian's interpreter: it is the one python3-pytest and matplotlib install into.
PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)
JOBS   ?= $(shell nproc)

# Only what the project runs (test-recurrent-state-rollback: upstream's, run by
# tests/features/test_gdn.py). The series' own C++ tests are the paged build's target
# llama-paged-tests, which each patch that adds a test extends (ctest label `paged`).
TARGETS := llama-server llama-completion llama-cli llama-batched-bench llama-bench \
           llama-quantize test-llama-archs test-backend-ops test-recurrent-state-rollback
PAGED_TEST_TARGETS := llama-paged-tests

CMAKE_FLAGS := -G Ninja -DCMAKE_BUILD_TYPE=Release \
               -DLLAMA_BUILD_TESTS=ON -DLLAMA_OPENSSL=OFF \
               -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
               $(BACKEND_FLAGS_$(BACKEND))

# Relative paths in ccache keys: a fresh clone elsewhere hits the same cache. The sanitizer
# build carries debug info, for which ccache would also key on the build directory: a clone
# elsewhere missed every object of it (20 minutes on the CI machine), so the directory is left
# out (its only trace is DW_AT_comp_dir; sources are named relative to it).
export CCACHE_BASEDIR := $(CURDIR)
export CCACHE_NOHASHDIR := 1

.PHONY: all build build-both prepare configure test test-fast test-unit test-upstream-server check-series check-docs \
        verify-tree check-cuda check-windows sanitize dev export-patches clean clean-src help models bench-models serve serve-stop

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

# MinGW-w64 syntax check of the C/C++ files the series touches, against stock's (skipped without MinGW).
check-windows:
	@scripts/check-windows.sh

dev:
	@scripts/dev.sh

export-patches:
	@scripts/export-patches.sh

# --- test models (verify/) ---------------------------------------------------
# Generated on demand into MODELS_DIR by the generator, linked against the stock
# build's libllama (the public API only); never committed.
MODELS_DIR   ?= .cache/models
export MODELS_DIR
GEN_MODEL    := build/tools/gen-model
GEN_SRC      := $(firstword $(wildcard verify/gen-model.c verify/gen-model.cpp))
GATE_PRESETS := gate-llama gate-qwen3 gate-qwen3moe gate-qwen35 gate-qwen35moe gate-qwen3next
GATE_MODELS  := $(GATE_PRESETS:%=$(MODELS_DIR)/%.gguf)
BENCH_QUANTS := q8_0 q4_k_m
BENCH_MODEL_FILES := $(foreach p,bench-qwen35 bench-qwen35moe bench-llama,$(BENCH_QUANTS:%=$(MODELS_DIR)/$(p)-%.gguf))
QWEN35_VOCAB := src/stock/models/ggml-vocab-qwen35.gguf
GEN_COMPILER := $(if $(filter %.cpp,$(GEN_SRC)),$(CXX) -std=c++17,$(CC) -std=c11)

$(GEN_MODEL): $(GEN_SRC) $(STOCK_BUILD)/bin/libllama.so
	@mkdir -p $(@D)
	$(GEN_COMPILER) -O2 -Wall -Wextra -o $@ $< -Isrc/stock/include -Isrc/stock/ggml/include \
	    -L$(STOCK_BIN) -lllama -lggml -lggml-base -Wl,-rpath,$(STOCK_BIN) -lm

$(STOCK_BUILD)/bin/libllama.so:
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
# The series' C++ tests (ctest label `paged`) under AddressSanitizer and UBSan, in a build
# configuration of their own: llama, ggml and the tests, nothing else. The in-place GDN forms
# alias their source and destination and index a scratch area, exactly where memory bugs hide.
SAN_DIR := build/paged-sanitize
SAN_CMAKE_FLAGS := -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLLAMA_BUILD_TESTS=ON \
                   -DGGML_SANITIZE_ADDRESS=ON -DGGML_SANITIZE_UNDEFINED=ON \
                   -DLLAMA_SANITIZE_ADDRESS=ON -DLLAMA_SANITIZE_UNDEFINED=ON \
                   -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
                   -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF

sanitize:
	@LLAMA_PAGED=on ./prepare.sh >/dev/null
	@test -f $(SAN_DIR)/build.ninja || cmake -S src/paged -B $(SAN_DIR) $(SAN_CMAKE_FLAGS) >/dev/null
	cmake --build $(SAN_DIR) -j $(JOBS) --target llama-paged-tests
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --test-dir $(SAN_DIR) -L paged --output-on-failure

# --- tests ----------------------------------------------------------------------
# Tiers (pytest.ini): fast (no build), build (both builds of BACKEND), gpu (a device;
# skipped with the reason where there is none). 'make test' runs them all.
PYTEST := $(PYTHON) -m pytest

# The series' own C++ tests, in the paged build.
test-unit: build-both
	ctest --test-dir $(PAGED_BUILD) -L paged --output-on-failure

# Upstream's own server test suite (the pinned stock checkout's tools/server/tests), offline, run
# against stock, paged with no knob and paged with the serving knobs: every test's outcome must
# be stock's, but for tests/upstream_server/allow.txt (docs/VERIFY.md).
test-upstream-server: build-both $(MODELS_DIR)/gate-llama.gguf
	$(PYTHON) tests/upstream_server/run.py --model $(MODELS_DIR)/gate-llama.gguf

test: check-series check-docs build-both verify-tree check-cuda check-windows sanitize models test-upstream-server test-unit
	$(PYTEST) tests/

# No build, no network beyond the cached upstream source: seconds.
test-fast: check-series check-docs
	$(PYTEST) -m fast tests/

clean:
	rm -rf build

# Deletes the prepared checkouts. prepare.sh refuses to touch a checkout with
# local changes; this is the explicit way to discard them (src/dev included).
clean-src:
	@for d in src/*/; do [ -d "$$d" ] && echo "removing $$d"; done; rm -rf src
