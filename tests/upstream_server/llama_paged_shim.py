"""pytest plugin: upstream llama.cpp's server test suite (tools/server/tests), offline.

Loaded by tests/upstream_server/run.py with `-p llama_paged_shim` into a scratch copy of the
pinned checkout's tests directory (build/upstream-server/<config>/tools/server/tests); the
upstream files are never edited, their classes are patched here at run time:

- models: utils.ServerPreset presets download their models from Hugging Face (--hf-repo /
  --hf-file; ServerPreset.load_all() starts every preset once, online, to fill the cache).
  load_all() becomes a check that the generated model exists, and ServerProcess.start() runs
  the generated model (UPSTREAM_SHIM_MODEL, a gate model of `make models`) in place of the tiny
  text models below. A server asking for any other Hugging Face model, a model URL, a draft
  model or a LoRA adapter is skipped at start-up, with the model named, as is a file download.
- kinds of model gen-model cannot make (embedding, rerank, vision, infill, draft, LoRA) and
  tests that need the network are skipped at collection time, each with its reason (SKIPS).
- the `openai` client is not packaged by Debian: when it cannot be imported a stub module
  stands in (so that the five test modules importing it are still collected) and every test
  whose code calls OpenAI(...) is skipped at collection time; the stub skips any other use.
- UPSTREAM_SHIM_FORCE_KVU=1 adds --kv-unified to every server (the prefix cache needs it;
  run.py compares such a run only with a stock run that forces it too).
- UPSTREAM_SHIM_THREADS=N gives --threads N to every server that the test does not set: on a
  small shared machine two threads of a server spin against any other load (a test of 1 s took
  50 s next to another llama-server); the outcomes do not depend on it.
- outcomes: every test's outcome (passed, failed, error, skipped, xfailed, xpassed) with a
  one-line reason goes to UPSTREAM_SHIM_RESULTS (JSON), which run.py compares.
"""
import importlib.util
import inspect
import json
import os
import sys
import time
import types

import pytest

# The Hugging Face models the suite's text presets use, all tiny llama-architecture models: the
# generated gate model stands in for them. (repo, file); file None = the repo's default file.
TEXT_MODELS = {
    ("ggml-org/models", "tinyllamas/stories260K.gguf"),   # ServerProcess's default
    ("ggml-org/test-model-stories260K", None),            # ServerPreset.tinyllama2
}

# Tests skipped at collection time: (node id prefix, reason). The reason says what is missing.
NO_EMBD = "needs an embedding model (bert-bge-small from Hugging Face); gen-model makes no BERT/pooled model"
NO_ROUTER_MODEL = ("router mode: needs models in the Hugging Face cache (tinygemma3, stories260K, "
                   "stories260K-infill, test-model-router-download); no network here")
NO_UI = "needs the web UI, which the builds leave out (-DLLAMA_BUILD_UI=OFF)"
NO_CONTAINER = "needs docker or podman and the busybox image from a registry: no network here"
SKIPS = [
    ("unit/test_embedding.py", NO_EMBD),
    ("unit/test_metrics.py::test_metrics_embedding_prompt_is_counted", NO_EMBD),
    ("unit/test_rerank.py", "needs a reranker model (jina-reranker-v1-tiny from Hugging Face); gen-model makes none"),
    ("unit/test_vision_api.py", "needs a vision model and its mmproj (tinygemma3 from Hugging Face); gen-model makes none"),
    ("unit/test_infill.py", "needs a model with FIM tokens (stories260K-infill from Hugging Face); the gate models' "
                            "test vocabulary has no special tokens"),
    ("unit/test_speculative.py", "needs a draft model downloaded from Hugging Face (stories15M-q4_0) and stories15M_MOE"),
    ("unit/test_lora.py", "needs stories15M_MOE and a LoRA adapter downloaded from Hugging Face"),
    # router mode serves the models of the Hugging Face cache (LLAMA_CACHE), which is empty here
    *((f"unit/test_router.py::{t}", NO_ROUTER_MODEL) for t in (
        "test_router_chat_completion_stream[ggml-org/tinygemma3-GGUF:Q8_0-True]",
        "test_router_unload_model", "test_router_models_max_evicts_lru",
        "test_router_queue_does_not_evict_busy_model", "test_router_queue_coalesces_requests_for_same_model",
        "test_router_queue_client_disconnect_keeps_model", "test_router_queue_is_fifo",
        "test_router_queue_two_waiters_share_one_eviction", "test_router_no_models_autoload",
        "test_router_api_key_required", "test_router_dedup_cache_models", "test_router_download_model")),
    ("unit/test_stream.py", NO_ROUTER_MODEL),
    ("unit/test_proxy.py::test_mcp_proxy", "fetches http://example.com through the CORS proxy: no network here"),
    # the Makefile builds with -DLLAMA_BUILD_UI=OFF: GET / is a 404 in both builds
    ("unit/test_basic.py::test_no_ui", NO_UI),
    ("unit/test_security.py::test_access_static_assets_without_api_key", NO_UI),
    # a container runtime pulling busybox from a registry
    ("unit/test_tools_builtin.py::test_tools_builtin_runtime_header[docker]", NO_CONTAINER),
    ("unit/test_tools_builtin.py::test_tools_builtin_runtime_header[podman]", NO_CONTAINER),
    ("unit/test_tools_builtin.py::test_tools_builtin_docker_runtime_cleans_up_spawned_container", NO_CONTAINER),
]

_RESULTS = {}


def _env_model():
    model = os.environ.get("UPSTREAM_SHIM_MODEL")
    if not model:
        raise pytest.UsageError("UPSTREAM_SHIM_MODEL is not set (tests/upstream_server/run.py sets it)")
    return model


# --- the openai client ------------------------------------------------------------------------

OPENAI_MISSING = importlib.util.find_spec("openai") is None
OPENAI_REASON = "needs the openai Python client, which Debian does not package (stubbed by llama_paged_shim)"


def _install_openai_stub():
    stub = types.ModuleType("openai")
    stub.__doc__ = "llama_paged_shim: stand-in for the openai client, which is not installed"

    class OpenAI:  # noqa: D401 - a stand-in
        def __init__(self, *args, **kwargs):
            pytest.skip(OPENAI_REASON)

    stub.OpenAI = OpenAI
    stub.__llama_paged_stub__ = True
    sys.modules["openai"] = stub


if OPENAI_MISSING:
    _install_openai_stub()


def _calls_openai(item):
    fn = getattr(item, "function", None)
    if fn is None:
        return False
    try:
        return "OpenAI(" in inspect.getsource(fn)
    except (OSError, TypeError):
        return False


# --- models -----------------------------------------------------------------------------------

def _patch_utils(config):
    # the suite imports `utils` from its own directory (rootdir); import it first, from there
    rootdir = str(config.rootpath)
    if rootdir not in sys.path:
        sys.path.insert(0, rootdir)
    import utils  # noqa: E402 - upstream's tools/server/tests/utils.py

    model = _env_model()
    force_kvu = os.environ.get("UPSTREAM_SHIM_FORCE_KVU") == "1"
    threads = int(os.environ.get("UPSTREAM_SHIM_THREADS") or 0)
    original_start = utils.ServerProcess.start

    def start(self, *args, **kwargs):
        repo, hf_file = self.model_hf_repo, self.model_hf_file
        if repo is not None:
            if (repo, hf_file) not in TEXT_MODELS:
                pytest.skip(f"needs the Hugging Face model {repo}{'/' + hf_file if hf_file else ''}: "
                            "no network here, and not a kind gen-model makes")
            self.model_hf_repo = None
            self.model_hf_file = None
            self.model_file = model
        if self.model_url:
            pytest.skip(f"needs a model downloaded from {self.model_url}")
        if self.model_draft:
            pytest.skip("needs a draft model (speculative decoding) from Hugging Face")
        if self.lora_files:
            pytest.skip("needs LoRA adapters from Hugging Face")
        if self.mmproj_url:
            pytest.skip(f"needs a multimodal projector from {self.mmproj_url}")
        if force_kvu:
            self.kv_unified = True
        if threads and self.n_threads is None:
            self.n_threads = threads
        return original_start(self, *args, **kwargs)

    def load_all():
        if not os.path.isfile(model):
            raise RuntimeError(f"UPSTREAM_SHIM_MODEL={model} does not exist (make models)")

    def download_file(url, output_file_path=None):
        pytest.skip(f"downloads {url}: no network here")

    original_stop = utils.ServerProcess.stop

    def stop(self):
        # how the server ended is part of a test's outcome: stock exits 0 on SIGTERM; a server that
        # crashes on the way out, or does not stop in 5 s and is killed, must not pass unseen
        process = self.process
        original_stop(self)
        if process is not None and process.returncode not in (0, None):
            test_id = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
            if test_id:
                entry = _RESULTS.setdefault(test_id, {"outcome": None, "reason": "", "duration": 0.0})
                entry.setdefault("exits", []).append(process.returncode)

    utils.ServerProcess.start = start
    utils.ServerProcess.stop = stop
    utils.ServerPreset.load_all = staticmethod(load_all)
    utils.download_file = download_file


def pytest_configure(config):
    _patch_utils(config)


def pytest_collection_modifyitems(config, items):
    for item in items:
        for prefix, reason in SKIPS:
            # a module, a test (all its parameters) or one parametrized case
            if item.nodeid == prefix or item.nodeid.startswith(prefix + "::") or \
                    ("::" in prefix and "[" not in prefix and item.nodeid.startswith(prefix + "[")):
                item.add_marker(pytest.mark.skip(reason=reason))
                break
        else:
            if OPENAI_MISSING and _calls_openai(item):
                item.add_marker(pytest.mark.skip(reason=OPENAI_REASON))


# --- the result log ---------------------------------------------------------------------------

def _reason(report):
    longrepr = report.longrepr
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (file, line, reason)
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message.splitlines()[0][:300] if crash.message else ""
    return str(longrepr).strip().splitlines()[-1][:300] if str(longrepr).strip() else ""


def pytest_runtest_logreport(report):
    entry = _RESULTS.setdefault(report.nodeid, {"outcome": None, "reason": "", "duration": 0.0})
    entry["duration"] = round(entry["duration"] + report.duration, 3)
    wasxfail = hasattr(report, "wasxfail")
    if report.when == "call":
        if wasxfail:
            outcome = "xfailed" if report.skipped else "xpassed"
        else:
            outcome = report.outcome
        if entry["outcome"] in (None, "passed"):
            entry["outcome"] = outcome
            entry["reason"] = _reason(report) if outcome != "passed" else ""
    elif report.failed:
        # setup or teardown: an error, unless the call already failed
        if entry["outcome"] in (None, "passed"):
            entry["outcome"] = "error"
            entry["reason"] = f"{report.when}: {_reason(report)}"
    elif report.skipped and report.when == "setup":
        entry["outcome"] = "xfailed" if wasxfail else "skipped"
        entry["reason"] = _reason(report)
    elif report.when == "setup" and entry["outcome"] is None:
        pass  # the call decides


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("UPSTREAM_SHIM_RESULTS")
    if not path:
        return
    data = {
        "exitstatus": int(exitstatus),
        "finished": time.time(),
        "openai": "stub" if OPENAI_MISSING else "installed",
        "tests": _RESULTS,
    }
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
