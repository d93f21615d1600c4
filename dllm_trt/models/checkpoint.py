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


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _unreadable(f: Path, e: BaseException) -> DllmError:
    first = (str(e).splitlines() or [type(e).__name__])[0][:200]
    size = f.stat().st_size if f.is_file() else 0
    return DllmError(f"{f} is not a readable safetensors file ({size} bytes: {first}); it is truncated or damaged: "
                     "copy it again from the original checkpoint")


def _read(f: Path, names: list[str] | None = None) -> tuple[list[str], dict[str, torch.Tensor]]:
    """(tensor names, the tensors ``names``) of one file, with a one-line error naming the file
    (safetensors raises a bare SafetensorError, or a Rust panic that is a BaseException)."""
    try:
        with safe_open(str(f), framework="pt") as sf:
            keys = list(sf.keys())
            missing = [n for n in names or [] if n not in keys]
            if missing:
                raise DllmError(f"{f} lacks tensor {missing[0]}, which the shard index places there; copy the "
                                "shards and the index again from the original checkpoint")
            return keys, {n: sf.get_tensor(n) for n in names or []}
    except (DllmError, KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as e:  # noqa: B036 - pyo3's PanicException derives from BaseException
        raise _unreadable(f, e) from None


def _index_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise DllmError(f"{index} is not a valid shard index ({e}); it must be JSON with a \"weight_map\" object "
                        "of tensor name -> shard file") from None
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise DllmError(f"{index} has no usable \"weight_map\" (tensor name -> shard file name); copy the index "
                        "again from the original checkpoint")
    return weight_map


def _weight_files(model_dir: Path) -> dict[str, Path]:
    """Map tensor name -> safetensors file, from the shard index or the single file(s)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _index_map(index)
        files = {}
        for name, fname in weight_map.items():
            f = model_dir / fname
            if Path(fname).name != fname or not fname.endswith(".safetensors"):  # a shard is a file of this folder
                raise DllmError(f"{index} names shard {fname!r} for tensor {name}: a shard must be a .safetensors "
                                "file name in the checkpoint folder itself (no folders, no '..'); fix the index")
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
        for name in _read(f)[0]:
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
        state.update(_read(f, names)[1])
    return state


def check_weights(state: dict[str, torch.Tensor], model_dir: Path) -> None:
    """Refuse weights no model was trained with: integer tensors and NaN/Inf values (they decode to nothing)."""
    for name, t in state.items():
        if t.dtype not in FLOAT_DTYPES:
            raise DllmError(f"{model_dir}: tensor {name} is stored as {str(t.dtype).removeprefix('torch.')}; "
                            "model weights must be float32, float16 or bfloat16: re-save the checkpoint")
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise DllmError(f"{model_dir}: tensor {name} holds {bad} NaN/Inf value(s); the checkpoint is damaged: "
                            "copy it again from the original")


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
    check_weights(state, Path(model_dir))
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
