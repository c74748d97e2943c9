# Benchmarks, stock vs paged (docs/BENCHMARKS.md). Included by the top-level Makefile.
#
#   make bench         batched-bench sweep + memory table + the serving
#                      workloads, into bench/results/<timestamp>/ (minutes to hours)
#   make bench-smoke   the same tools on a tiny random model (seconds)
#   make bench-sweep   the prefill-budget frontier: stock and each budget setting
#                      on the staggered workload (bench/sweep.py, docs/SCHEDULER.md)
#   make bench-capacity  stock with its slots' contexts reserved against the paged
#                      server capped at the same memory, at rising concurrency
#                      (bench/capacity.py, docs/BENCHMARKS.md)
#   make scale-demo    paged replicas behind HAProxy on loopback: prefix affinity
#                      against round-robin, then a replica stopped midway
#                      (bench/scale.py, deploy/haproxy/, docs/SCALE-OUT.md)
#
# Every variable can be overridden on the command line, e.g.
#   make bench BENCH_REPS=5 BENCH_KNOBS="LLAMA_X=1" BENCH_MODELS="a.gguf b.gguf"

# Including this file must not change the includer's default goal (make's first
# target wins): remember it here, restore it at the end.
BENCH_SAVED_DEFAULT_GOAL := $(.DEFAULT_GOAL)

# STOCK_BIN and PAGED_BIN: the top-level Makefile's, for its BACKEND.
PYTHON       ?= $(firstword $(wildcard /usr/bin/python3) python3)
THREADS      ?= $(shell nproc)
# Same default as the top-level Makefile (which wins when it sets it first).
MODELS_DIR   ?= .cache/models
BENCH_MODELS ?= $(MODELS_DIR)/bench-qwen35-q8_0.gguf
# Environment for the paged runs only ("LLAMA_X=1 LLAMA_Y=2").
BENCH_KNOBS  ?=
BENCH_REPS   ?= 10
BENCH_NPP    ?= 128
BENCH_NTG    ?= 128
BENCH_NPL    ?= 1,4,8,16,32
# -c:-np pairs for the memory table.
BENCH_MEM_CONFIGS ?= 4096:1,32768:8,65536:8
BENCH_WORKLOADS   ?= bench/workloads/shared_prefix.json bench/workloads/system_prompt.json bench/workloads/chat.json bench/workloads/staggered.json bench/workloads/burst.json
# The serving benchmarks use one model: the first of BENCH_MODELS.
BENCH_SERVE_MODEL ?= $(firstword $(BENCH_MODELS))

# Evaluated once, on first use, and only by the bench targets: a plain
# recursive variable would call date on every reference (two steps could land
# in different directories), and := would run it on every make invocation.
BENCH_OUT ?= $(eval BENCH_OUT := bench/results/$(shell date +%Y%m%d-%H%M%S))$(BENCH_OUT)

# What every tool gets: both builds and the paged-only knobs.
BENCH_BUILDS = --stock-bin $(STOCK_BIN) --paged-bin $(PAGED_BIN) --knobs "$(BENCH_KNOBS)"

SMOKE_DIR   ?= bench/results/smoke
SMOKE_MODEL ?= $(SMOKE_DIR)/llama-dense.gguf

.PHONY: bench bench-smoke bench-sweep bench-capacity scale-demo

# Scale-out demo: replicas (each -t SCALE_THREADS), the paged knobs, the workload, and when a
# replica stops in the third run (seconds in).
SCALE_REPLICAS ?= 2
SCALE_THREADS  ?= 1
SCALE_KNOBS    ?= $(or $(BENCH_KNOBS),LLAMA_SERVING=1)
SCALE_WORKLOAD ?= bench/workloads/scale.json
SCALE_STOP_S   ?= 20
SCALE_SERVER_ARGS ?=

# Capacity at fixed memory: the paged server's knobs (the serving profile unless BENCH_KNOBS says
# otherwise; the tool adds LLAMA_KV_MAX_MIB), the requests sent at once, stock's slots and the
# context each slot reserves.
BENCH_CAPACITY_KNOBS  ?= $(or $(BENCH_KNOBS),LLAMA_SERVING=1)
BENCH_CAPACITY_LEVELS ?= 4,8,16
BENCH_CAPACITY_SLOTS  ?= 4
BENCH_CAPACITY_CTX    ?= 8192
# extra llama-server arguments of both builds (e.g. --no-repack where the CPU's AMX path fails)
BENCH_CAPACITY_SERVER_ARGS ?=

# The prefill-budget settings of the sweep: static budgets, batch budgets and latency targets.
BENCH_SWEEP_WORKLOAD ?= bench/workloads/staggered.json
BENCH_SWEEP_POINTS   ?= LLAMA_PREFILL_BUDGET=32 LLAMA_PREFILL_BUDGET=128 LLAMA_PREFILL_BUDGET=512 \
                        LLAMA_MAX_BATCH_TOKENS=64 LLAMA_MAX_BATCH_TOKENS=256 \
                        LLAMA_DECODE_TARGET_MS=250 LLAMA_DECODE_TARGET_MS=500 LLAMA_DECODE_TARGET_MS=1000 \
                        LLAMA_DECODE_TARGET_MS=2000
BENCH_SWEEP_REPS     ?= 1

# The models are prerequisites so that the includer's rules can generate them
# (make bench-models); a model given by path that does not exist and has no rule
# stops make with "No rule to make target".
bench: $(BENCH_MODELS) $(BENCH_SERVE_MODEL)
	@echo "bench: results in $(BENCH_OUT)"
	$(PYTHON) bench/batched.py --models $(BENCH_MODELS) --reps $(BENCH_REPS) \
	  --npp $(BENCH_NPP) --ntg $(BENCH_NTG) --npl $(BENCH_NPL) $(BENCH_BUILDS) --threads $(THREADS) \
	  --out $(BENCH_OUT)
	$(PYTHON) bench/memory.py --model $(BENCH_SERVE_MODEL) --configs $(BENCH_MEM_CONFIGS) \
	  $(BENCH_BUILDS) --threads $(THREADS) --out $(BENCH_OUT)
	$(PYTHON) bench/loadgen.py --model $(BENCH_SERVE_MODEL) --workload $(BENCH_WORKLOADS) \
	  $(BENCH_BUILDS) --threads $(THREADS) --out $(BENCH_OUT)
	@cat $(BENCH_OUT)/batched.md $(BENCH_OUT)/memory.md $(BENCH_OUT)/loadgen.md > $(BENCH_OUT)/SUMMARY.md
	@echo; echo "=== bench summary ($(BENCH_OUT)/SUMMARY.md) ==="; cat $(BENCH_OUT)/SUMMARY.md

bench-sweep: $(BENCH_SERVE_MODEL)
	@echo "bench-sweep: results in $(BENCH_OUT)"
	$(PYTHON) bench/sweep.py --model $(BENCH_SERVE_MODEL) --workload $(BENCH_SWEEP_WORKLOAD) \
	  --points $(BENCH_SWEEP_POINTS) --reps $(BENCH_SWEEP_REPS) $(BENCH_BUILDS) --threads $(THREADS) --out $(BENCH_OUT)

bench-capacity: $(BENCH_SERVE_MODEL)
	@echo "bench-capacity: results in $(BENCH_OUT)"
	$(PYTHON) bench/capacity.py --model $(BENCH_SERVE_MODEL) --levels $(BENCH_CAPACITY_LEVELS) \
	  --stock-slots $(BENCH_CAPACITY_SLOTS) --slot-ctx $(BENCH_CAPACITY_CTX) \
	  --stock-bin $(STOCK_BIN) --paged-bin $(PAGED_BIN) --knobs "$(BENCH_CAPACITY_KNOBS)" \
	  --server-args="$(BENCH_CAPACITY_SERVER_ARGS)" --threads $(THREADS) --out $(BENCH_OUT)

scale-demo: $(BENCH_SERVE_MODEL)
	@echo "scale-demo: results in $(BENCH_OUT)"
	$(PYTHON) bench/scale.py --model $(BENCH_SERVE_MODEL) --replicas $(SCALE_REPLICAS) --threads $(SCALE_THREADS) \
	  --workload $(SCALE_WORKLOAD) --stop-one-after $(SCALE_STOP_S) --paged-bin $(PAGED_BIN) --knobs "$(SCALE_KNOBS)" \
	  --server-args="$(SCALE_SERVER_ARGS)" --out $(BENCH_OUT)

# The tiny model is random weights from test-llama-archs (built with the stock
# configuration): no download, and the tools run for seconds with -t 1.
$(SMOKE_DIR)/llama-dense.gguf:
	@mkdir -p $(SMOKE_DIR)
	$(STOCK_BIN)/test-llama-archs -a '^llama$$' -s 42 -o $(SMOKE_DIR) >/dev/null

bench-smoke: $(SMOKE_MODEL)
	$(PYTHON) bench/batched.py --models $(SMOKE_MODEL) --reps 1 --npp 16 --ntg 4 --npl 1,2 \
	  $(BENCH_BUILDS) --threads 1 --out $(SMOKE_DIR)
	$(PYTHON) bench/memory.py --model $(SMOKE_MODEL) --configs 512:2 $(BENCH_BUILDS) --threads 1 --out $(SMOKE_DIR)
	$(PYTHON) bench/loadgen.py --model $(SMOKE_MODEL) --workload bench/workloads/smoke/*.json \
	  $(BENCH_BUILDS) --threads 1 --out $(SMOKE_DIR)

.DEFAULT_GOAL := $(BENCH_SAVED_DEFAULT_GOAL)
