"""dllm-trt: diffusion language models from a Hugging Face folder to a fast engine.

Importing the package imports nothing heavy: ``dllm_trt.runtime`` needs only numpy,
tokenizers and the backend you pick; ``dllm_trt.models`` and ``dllm_trt.export`` need torch.
"""
from .errors import DllmError

__version__ = "0.1.0"

__all__ = ["DllmError", "__version__"]
