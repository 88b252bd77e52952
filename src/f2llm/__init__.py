"""f2llm: train multilingual text-embedding models from Qwen3 decoders (the F2LLM-v2 recipe)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("f2llm")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
