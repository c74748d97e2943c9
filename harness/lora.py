"""Random-weight LoRA adapters for a generated gate model, so that the server's per-request
adapters (`--lora`, a request's "lora" field) and aLoRA (an adapter that turns on at an invocation
sequence of tokens) can be tested without a download.

The adapter is written with gguf-py from the pinned stock checkout (src/stock/gguf-py): LoRA
pairs for every layer's attn_q and attn_v, shaped from the model's own tensors, filled from a
seeded generator, so the same call gives the same file. Scaled so that it changes greedy answers
(an adapter that changes nothing would let a test pass by accident)."""
import sys

from . import paths
from .errors import HarnessError


def _gguf():
    gguf_py = paths.ROOT / "src" / "stock" / "gguf-py"
    if not gguf_py.is_dir():
        raise HarnessError(f"no gguf-py at {gguf_py}: prepare the stock checkout first ('make build LLAMA_PAGED=off')")
    if str(gguf_py) not in sys.path:
        sys.path.insert(0, str(gguf_py))
    try:
        import gguf  # noqa: PLC0415 - from the pinned checkout, found only at run time
        import numpy  # noqa: PLC0415
    except ImportError as err:
        raise HarnessError(f"writing a LoRA adapter needs numpy (Debian: python3-numpy): {err}") from err
    return gguf, numpy


def write_lora(model_path, out_path, seed=1, rank=4, alpha=8.0, scale=0.5, invocation_tokens=None):
    """Writes a LoRA adapter for the model at model_path to out_path and returns out_path.
    invocation_tokens: a list of token ids makes it an aLoRA adapter that applies from the last
    occurrence of that sequence in a prompt on."""
    gguf, np = _gguf()
    reader = gguf.GGUFReader(str(model_path))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    targets = [t for t in reader.tensors if t.name.endswith((".attn_q.weight", ".attn_v.weight"))]
    if not targets:
        raise HarnessError(f"{model_path}: no attn_q / attn_v tensors to adapt")
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(out_path), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    if invocation_tokens:
        writer.add_key_value("adapter.alora.invocation_tokens", [int(t) for t in invocation_tokens],
                             gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.UINT32)
    for t in targets:
        n_in, n_out = int(t.shape[0]), int(t.shape[1])  # ggml order: ne[0] is the input dimension
        base = t.name[: -len(".weight")]
        a = (rng.standard_normal((rank, n_in)) * scale / np.sqrt(n_in)).astype(np.float32)
        b = (rng.standard_normal((n_out, rank)) * scale).astype(np.float32)
        writer.add_tensor(f"{base}.weight.lora_a", a)
        writer.add_tensor(f"{base}.weight.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path
