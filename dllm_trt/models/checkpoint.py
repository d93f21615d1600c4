"""Load and save Hugging Face checkpoint folders (config.json + *.safetensors) with upstream names.

Only safetensors is read: no pickle, no remote code. Every error names the file or tensor.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import atomic
from ..config import ModelConfig
from ..errors import DllmError
from .llada import LLaDAModel
from .qwen2 import Qwen2DiffusionModel

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise DllmError(f"unknown dtype {name!r}; use one of fp32, fp16, bf16")
    return DTYPES[name]


def build_model(config: ModelConfig) -> torch.nn.Module:
    """An uninitialised model of the config's family (weights random, as torch initialises them)."""
    if config.family == "llada":
        return LLaDAModel(config)
    return Qwen2DiffusionModel(config)


def _weight_files(model_dir: Path) -> dict[str, Path]:
    """Map tensor name -> safetensors file, from the shard index or the single file(s)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = {}
        for name, fname in weight_map.items():
            f = model_dir / fname
            if not f.is_file():
                raise DllmError(f"{index} names shard {fname} for tensor {name}, but {f} is missing")
            files[name] = f
        return files
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        found = sorted(p.name for p in model_dir.iterdir())
        hint = " (only pickle weights found: convert them to safetensors first)" if any(
            n.endswith((".bin", ".pt", ".pth")) for n in found) else ""
        raise DllmError(f"no *.safetensors weights in {model_dir}{hint}; found: {', '.join(found) or 'nothing'}")
    files = {}
    for f in shards:
        with safe_open(str(f), framework="pt") as sf:
            for name in sf.keys():
                files[name] = f
    return files


def load_state_dict(model_dir: str | Path) -> dict[str, torch.Tensor]:
    model_dir = Path(model_dir)
    files = _weight_files(model_dir)
    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for name, f in files.items():
        by_file.setdefault(f, []).append(name)
    for f, names in by_file.items():
        with safe_open(str(f), framework="pt") as sf:
            for name in names:
                state[name] = sf.get_tensor(name)
    return state


def load_model(model_dir: str | Path, dtype: str | torch.dtype = "fp32", device: str = "cpu"):
    """Load a checkpoint folder; returns ``(model, config)`` with the model in eval mode."""
    config = ModelConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = build_model(config)
    state = load_state_dict(model_dir)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise DllmError(f"{model_dir}: checkpoint lacks tensor(s) {', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''} expected for model_type {config.model_type}")
    if unexpected:
        raise DllmError(f"{model_dir}: unexpected tensor(s) {', '.join(unexpected[:5])}"
                        f"{' ...' if len(unexpected) > 5 else ''}; is config.json's model_type right?")
    for name, param in expected.items():
        if tuple(state[name].shape) != tuple(param.shape):
            raise DllmError(f"{model_dir}: tensor {name} has shape {tuple(state[name].shape)}, "
                            f"config.json implies {tuple(param.shape)}")
    dt = torch_dtype(dtype)
    model.load_state_dict({k: v.to(dt) for k, v in state.items()}, assign=True)
    return model.to(device).eval(), config


def save_model(model: torch.nn.Module, model_dir: str | Path, extra_files: dict[str, str | bytes] | None = None) -> None:
    """Write config.json + model.safetensors (+ extra files) atomically: a temp folder renamed at the end."""
    model_dir = Path(model_dir)
    tmp = atomic.staging_dir(model_dir, "save")
    try:
        model.config.save(tmp)
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name, content in (extra_files or {}).items():
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(tmp / name, mode) as fh:
                fh.write(content)
        atomic.publish(tmp, model_dir)
    except BaseException:
        atomic.discard(tmp)
        raise
