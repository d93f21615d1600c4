"""The artefact folder: ``dllm_config.json``, the tokenizer files, and the atomic write.

``dllm_config.json`` is everything the runtime needs besides the graph: the full ModelConfig
(and the upstream config it is rebuilt from), the tensor contract, the cache layout, the
shape ranges, the validation record and the generation defaults. The folder is built in a
hidden temporary sibling and renamed into place at the end, so an interrupted export leaves
either the previous artefact or nothing, never a half-written folder.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from .. import __version__, atomic
from ..config import ModelConfig
from ..errors import DllmError
from ..contract import (CACHE_LAYOUT, CONFIG_FILE, DREAM_SAMPLER_FILE, FORMAT_VERSION, KV_TYPES, MODEL_FILE,
                        SAMPLER_FILE, SELECT_OUTPUTS, input_names, output_names, tensor_shapes)
from ..runtime.chat import ChatTemplate, load_chat_template
from ..runtime.generation_files import checkpoint_generation_defaults
from ..runtime.settings import CACHE_MODES, GenerationConfig, field_kinds, folder_generation_defaults

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "dllm_generation.json")


def model_config_dict(config: ModelConfig) -> dict[str, Any]:
    """The interpreted config fields (``extra`` lives in hf_config); tuples become lists for JSON."""
    d = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "extra"}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def tensor_specs(config: ModelConfig, dtype: str) -> tuple[list[dict], list[dict]]:
    shapes = tensor_shapes(config, KV_TYPES[dtype])

    def spec(name: str) -> dict:
        t, dims = shapes[name]
        return {"name": name, "dtype": t, "shape": dims}

    n = config.num_layers
    return [spec(x) for x in input_names(n)], [spec(x) for x in output_names(n)]


def generation_defaults(model_dir: Path, config: ModelConfig, cache: str | None) -> dict[str, Any]:
    """Decode defaults: GenerationConfig's, overridden by the checkpoint's generation_config.json (HF's meaning)
    and dllm_generation.json (dllm-trt's keys), then --cache."""
    defaults = dataclasses.asdict(GenerationConfig())
    defaults.update(folder_generation_defaults(model_dir))
    if cache is not None:
        modes = CACHE_MODES[config.attention]
        if cache not in modes:
            raise DllmError(f"--cache {cache} does not apply to a {config.attention} model ({config.model_type}); "
                            f"use one of {', '.join(modes)}")
        defaults["cache"] = cache
    if defaults.get("cache") is None:
        defaults["cache"] = CACHE_MODES[config.attention][-1 if config.attention == "block_causal" else 0]
    return defaults


def generation_sources(model_dir: Path) -> list[str]:
    """The checkpoint files the generation defaults were read from (recorded in dllm_config.json)."""
    return checkpoint_generation_defaults(model_dir, field_kinds())[1]


def read_chat_template(model_dir: Path) -> ChatTemplate | None:
    """The checkpoint's chat template (chat_template.jinja or tokenizer_config.json), recorded in the export so
    `run` applies the same one; a template that does not compile fails the export, not the first prompt."""
    template = load_chat_template(model_dir)
    if template is not None:
        template.check()
    return template


def copy_tokenizer_files(model_dir: Path, out: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out / name)
            copied.append(name)
    return copied


def build_dllm_config(config: ModelConfig, dtype: str, opset: int, external_data: str | None,
                      validation: dict[str, Any], tokenizer: str | None, gen_defaults: dict[str, Any],
                      source: str, torch_version: str, chat_template: ChatTemplate | None = None,
                      generation_sources: list[str] | None = None, ops: str = "standard") -> dict[str, Any]:
    inputs, outputs = tensor_specs(config, dtype)
    return {
        "dllm_trt_version": __version__,
        "format_version": FORMAT_VERSION,
        "family": config.family,
        "model_type": config.model_type,
        "attention": config.attention,
        "dtype": dtype,
        "model_config": model_config_dict(config),
        "hf_config": config.to_hf_dict(),
        "model_file": MODEL_FILE,
        "external_data": external_data,
        "onnx": {"opset": opset, "exporter": "torch.onnx.export (TorchScript, dynamo=False)", "torch_version": torch_version,
                 "ops": ops},
        "inputs": inputs,
        "outputs": outputs,
        "cache": {
            "layout": CACHE_LAYOUT,
            "num_layers": config.num_layers,
            "num_kv_heads": config.num_kv_heads,
            "head_dim": config.head_dim,
            "dtype": KV_TYPES[dtype],
            "present": "present.{i}.* hold only the current tokens' keys/values (not past + current as in Optimum); "
                       "the runtime writes them into its cache in place, at the tokens' positions",
            "past": "the runtime passes its whole cache buffer as past_key_values (P = capacity), stale and "
                    "unwritten positions masked by attention_bias: no step slices or copies the cache",
        },
        "shape_ranges": {
            "batch": [1, None],
            "query_len": [1, config.max_position_embeddings],
            "past_len": [0, config.max_position_embeddings],
            "rows": [1, config.max_position_embeddings],
            "max_positions": config.max_position_embeddings,
            "note": "all axes are dynamic in the graph; max_positions is the model's max_position_embeddings. "
                    "validation.cases lists the shapes checked against PyTorch.",
        },
        "validation": validation,
        "sampler_file": SAMPLER_FILE,
        "dream_sampler_file": DREAM_SAMPLER_FILE if config.family == "dream" else None,
        "selection": {"outputs": list(SELECT_OUTPUTS), "rows": "logits_index [B, R]",
                      "rule": "top-1 over the vocabulary with the mask token excluded; confidence = its softmax "
                              "probability (float32); ties to the lowest token id"},
        "tokenizer": tokenizer,
        "chat_template": chat_template.text if chat_template else None,
        "chat_template_source": Path(chat_template.source.split(" ")[0]).name if chat_template else None,
        "chat_special_tokens": chat_template.special_tokens if chat_template else {},
        "generation_defaults": gen_defaults,
        "generation_sources": generation_sources or [],
        "source": source,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def check_out_dir(out: Path, model_dir: Path) -> None:
    """Refuse destinations that would destroy something that is not an earlier export."""
    out_r, model_r = out.resolve(), model_dir.resolve()
    if out_r == model_r or model_r.is_relative_to(out_r):
        raise DllmError(f"--out {out} would replace the source folder {model_dir} (what is being read); pick "
                        "another folder")
    if out.exists():
        if not out.is_dir():
            raise DllmError(f"--out {out} exists and is a file; pick a folder path")
        if any(out.iterdir()) and not (out / CONFIG_FILE).is_file():
            raise DllmError(f"--out {out} exists, is not empty and is not a dllm-trt export; "
                            "pick a new folder (an earlier export there would be replaced)")


def staging_dir(out: Path) -> Path:
    return atomic.staging_dir(out, "export")


publish = atomic.publish
discard = atomic.discard
