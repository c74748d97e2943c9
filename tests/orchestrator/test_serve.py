"""make serve / make serve-stop: the main job's own start and stop commands."""
import os
import signal

import pytest

from conftest import run
from harness import paths
from harness.server import free_port, http_get_json

pytestmark = pytest.mark.build


def make(*args, env=None):
    return run(["make", "--no-print-directory", *args, f"BACKEND={paths.backend()}"], env=env, timeout=900)


def test_serve_then_serve_stop(tmp_path):
    model = paths.models_dir() / "gate-qwen35.gguf"
    port = free_port()
    env = {"SERVE_RUN_DIR": str(tmp_path), "PORT": str(port), "CTX": "2048", "SLOTS": "2"}
    pidfile = tmp_path / "llama-server.pid"
    try:
        up = make("serve", f"MODEL={model}", env=env)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        assert f"is up: http://127.0.0.1:{port}" in up.stdout
        # the recommended knobs come from the patch trailers: the serving profile (paged/0062)
        assert "knobs: LLAMA_SERVING=1" in up.stdout, up.stdout
        log = (tmp_path / "llama-server.log").read_text(errors="replace")
        assert "LLAMA_SERVING=1: LLAMA_KV_PAGED=1 (profile" in log and "--kv-unified (profile" in log, log[-3000:]
        pid = int(pidfile.read_text())
        assert http_get_json(port, "/health")[0] == 200

        # stopping needs no MODEL (it once did, and failed without stopping anything)
        stop_env = {k: v for k, v in env.items() if k != "MODEL"}
        down = make("serve-stop", env=stop_env)
        assert down.returncode == 0, down.stdout + down.stderr
        assert f"serve: stopped (PID {pid})" in down.stdout
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert not pidfile.exists()

        again = make("serve-stop", env=stop_env)
        assert again.returncode == 0 and "no server running" in again.stdout
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


def test_serve_with_a_missing_model_is_a_clear_error(tmp_path):
    proc = make("serve", f"MODEL={tmp_path / 'nope.gguf'}", env={"SERVE_RUN_DIR": str(tmp_path)})
    assert proc.returncode != 0
    assert "does not exist" in proc.stderr
