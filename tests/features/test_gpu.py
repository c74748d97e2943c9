"""The series on a GPU backend: its ops against the CPU (test-backend-ops compares every
backend with the CPU one: the in-place and ids forms of GATED_DELTA_NET that the GDN knobs
use), and paged KV memory on the device. Needs a device: skipped with the reason elsewhere."""
import pytest

from conftest import bin_dir, run
from verify import gate

pytestmark = pytest.mark.gpu


def test_gated_delta_net_forms_match_the_cpu_on_the_device():
    proc = run([bin_dir("paged") / "test-backend-ops", "test", "-o", "GATED_DELTA_NET"], timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "FAIL" not in proc.stdout


def test_paged_buffers_of_the_device():
    """LLAMA_KV_PAGED on a GPU (paged 0021-0023): the device's paged buffer type (CUDA virtual
    memory management) reads zero where nothing is committed, commits by range, lets a kernel
    write a committed range, gives memory back, and the device's free memory follows."""
    proc = run([bin_dir("paged") / "test-paged-buffer"], timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    devices = [line for line in out.splitlines() if "_Paged" in line and not line.startswith("CPU")]
    assert devices, f"no GPU device has a paged buffer type:\n{out[-2000:]}"


@pytest.mark.parametrize("model", ["gate-llama", "gate-qwen35"])
@pytest.mark.parametrize("fa", ["on", "off"])
def test_a_paged_kv_cache_on_the_device_gives_stock_output(model, fa):
    """With LLAMA_KV_PAGED=1 the caches on the GPU take device memory as cells are used (0023);
    a lone sequence lands on stock's cells, so its greedy output is stock's, byte for byte."""
    prompt = gate.PROMPTS["blocks"]
    path = gate.MODELS_DIR / f"{model}.gguf"
    stock = gate.run_greedy(bin_dir("stock"), path, prompt, fa)
    proc = gate.run_completion(gate.completion_cmd(bin_dir("paged"), path, prompt, fa), {"LLAMA_KV_PAGED": "1"})
    log = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    assert "memory as its cells are used" in log, "the cache did not page on the device"
    assert proc.stdout == stock
