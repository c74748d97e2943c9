"""Where things are: the one place that knows the build layout.

    build/<config>-<backend>/bin      config: stock | paged; backend: BACKEND (default cpu)

The Makefile computes STOCK_BIN and PAGED_BIN from BACKEND and exports them;
a tool run by hand without them gets the same answer from BACKEND here.
"""
import os
import pathlib

from .errors import HarnessError

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = ("stock", "paged")
BACKENDS = ("cpu", "cuda", "hip", "vulkan")
# The backends whose tests need a device (the gpu tier).
DEVICE_BACKENDS = ("cuda", "hip", "vulkan")


def backend():
    """BACKEND from the environment, checked: an unknown one is an error, never a silent cpu."""
    value = os.environ.get("BACKEND") or "cpu"
    if value not in BACKENDS:
        raise HarnessError(f"BACKEND must be one of {', '.join(BACKENDS)}; got '{value}'")
    return value


def bin_dir(config):
    """The bin directory of one configuration: STOCK_BIN / PAGED_BIN, else build/<config>-<BACKEND>/bin."""
    if config not in CONFIGS:
        raise HarnessError(f"unknown configuration '{config}' (expected {' or '.join(CONFIGS)})")
    env = os.environ.get(f"{config.upper()}_BIN")
    return pathlib.Path(env) if env else ROOT / "build" / f"{config}-{backend()}" / "bin"


def build_dir(config):
    """The build tree that holds bin_dir(config) (ctest runs there)."""
    return bin_dir(config).parent


def tools_dir():
    """build/tools: the helpers built from verify/ (the model generator, the log shim)."""
    return ROOT / "build" / "tools"


def models_dir():
    """MODELS_DIR (relative to the repository root, as the Makefile gives it), else
    .cache/models (where 'make models' writes)."""
    return ROOT / (os.environ.get("MODELS_DIR") or ".cache/models")
