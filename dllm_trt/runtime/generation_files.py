"""A checkpoint folder's decode defaults: Hugging Face's ``generation_config.json`` read with HF's meaning
of its keys, and dllm-trt's own settings in ``dllm_generation.json``.

``generation_config.json`` belongs to Hugging Face: ``max_new_tokens`` (the generation length) and
``eos_token_id`` (stop ids, read by ModelConfig) are read with transformers' meaning. Its sampling keys
(``do_sample``, ``temperature``, ``top_k``, ``top_p``) configure transformers' autoregressive ``generate()``,
and none of the families' diffusion decoders reads them: LLaDA's ``generate`` (temperature 0 unless
passed), Dream's ``diffusion_generate`` (``DreamGenerationConfig.from_model_config``: config.json, not this
file), Fast-dLLM v2's ``generate`` / ``batch_sample`` (temperature 0), SDAR's ``generate.py`` (its own
arguments). So they are not decode defaults here either: a Fast-dLLM v2 checkpoint, whose file carries
Qwen2.5's ``do_sample``, temperature 0.7, top-k 20, top-p 0.8, decodes greedily, as its authors' code does;
sampling is an option (``--temperature``, ``--top-k``, ``--top-p``) or a dllm_generation.json key.
dllm-trt's own keys (gen_length, block_length, steps, strategy, threshold, cache, ...) live in
``dllm_generation.json`` so they never collide with an HF key that means something else. Precedence:
GenerationConfig's defaults < generation_config.json < the family's keys < dllm_generation.json < options.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..config import FAMILIES
from ..errors import DllmError
from .setting_checks import check_values

HF_GENERATION_FILE = "generation_config.json"
DLLM_GENERATION_FILE = "dllm_generation.json"
EXPORT_CONFIG = "dllm_config.json"
# dllm-trt keys that are no Hugging Face generation key: finding one in generation_config.json marks a folder
# written before dllm_generation.json existed (read as before, with a warning)
LEGACY_KEYS = ("gen_length", "block_length", "strategy", "threshold", "factor", "cache", "sub_block_length")


def read_json_object(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DllmError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise DllmError(f"{path} must hold a JSON object, found {type(raw).__name__}")
    return raw


def hf_generation_fields(raw: dict[str, Any], source: str = HF_GENERATION_FILE) -> dict[str, Any]:
    """GenerationConfig fields from generation_config.json keys: the generation length (``max_new_tokens``);
    the sampling keys are the autoregressive generate()'s, not the diffusion decoders' (module docstring)."""
    out: dict[str, Any] = {}
    if raw.get("max_new_tokens") is not None:
        try:
            out["gen_length"] = int(raw["max_new_tokens"])
        except (TypeError, ValueError) as e:
            raise DllmError(f"{source}: max_new_tokens {raw['max_new_tokens']!r} is not a number ({e})") from None
    return out


# Dream's ``alg`` values that have a strategy of the same name (runtime/settings.py: DREAM_SCHEDULED +
# confidence_threshold; a test keeps the two lists equal). ``origin`` has no counterpart.
DREAM_ALGS = ("maskgit_plus", "topk_margin", "entropy", "confidence_threshold")


def dream_generation_keys(raw: dict) -> dict:
    """Dream's generation_config.json keys as GenerationConfig fields: ``alg`` names the strategy (Dream's
    ``origin``, independent random transfers, has no counterpart and is left to the defaults), ``alg_temp``
    (null: 0), ``steps`` and ``eps`` (the end of its timestep schedule) keep their names."""
    out: dict[str, Any] = {}
    if raw.get("alg") in DREAM_ALGS:
        out["strategy"] = raw["alg"]
    if "alg_temp" in raw:
        out["alg_temp"] = float(raw["alg_temp"] or 0.0)
    if isinstance(raw.get("steps"), int) and not isinstance(raw.get("steps"), bool):
        out["steps"] = raw["steps"]
    if isinstance(raw.get("eps"), (int, float)) and not isinstance(raw.get("eps"), bool):
        out["eps"] = float(raw["eps"])
    return out


def family_generation_fields(raw: dict[str, Any], family: str | None) -> dict[str, Any]:
    """GenerationConfig fields from a family's own generation_config.json keys (Dream's ``alg``, ``steps``,
    ``alg_temp``, ``eps``: the settings of its documented ``diffusion_generate`` call).

    Only Dream has such keys: ``alg`` -> strategy, ``alg_temp``, ``steps`` (``dream_generation_keys``).
    """
    if family == "dream" or "alg" in raw:  # `alg` is Dream's own key (a folder without config.json too)
        return dream_generation_keys(raw)
    return {}


def folder_family(folder: Path) -> str | None:
    """The family named by the folder's config.json (None when it has none or it is unreadable)."""
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type", "")
    except (OSError, ValueError, AttributeError):
        return None
    return FAMILIES.get(str(model_type).lower())


def checkpoint_generation_defaults(folder: Path, kinds: dict[str, tuple[type, bool]]) -> tuple[dict[str, Any], list[str]]:
    """Decode defaults of a checkpoint folder as GenerationConfig fields (``kinds``: settings.field_kinds()), checked
    as the options are, and the files they came from."""
    names = set(kinds)
    values: dict[str, Any] = {}
    sources: list[str] = []
    hf_path, own_path = folder / HF_GENERATION_FILE, folder / DLLM_GENERATION_FILE
    if hf_path.is_file():
        raw = read_json_object(hf_path)
        legacy = [k for k in LEGACY_KEYS if k in raw]
        if legacy and not own_path.is_file():
            warnings.warn(f"{hf_path} holds dllm-trt decode keys ({', '.join(legacy)}) under Hugging Face's file: "
                          f"move them to {DLLM_GENERATION_FILE} (read from here for now, with their dllm-trt meaning)",
                          FutureWarning, stacklevel=3)
            legacy_values = {k: v for k, v in raw.items() if k in names}
            check_values(legacy_values, kinds, name=lambda k: f"{hf_path}: {k!r}")
            values.update(legacy_values)
        else:
            mapped = {**hf_generation_fields(raw, str(hf_path)), **family_generation_fields(raw, folder_family(folder))}
            check_values(mapped, kinds, name=lambda k: f"{hf_path}: {k} (from its keys)")
            values.update(mapped)
        sources.append(HF_GENERATION_FILE)
    if own_path.is_file():
        raw = read_json_object(own_path)
        unknown = sorted(set(raw) - names)
        if unknown:
            raise DllmError(f"{own_path}: unknown key {unknown[0]!r}; its keys are GenerationConfig's "
                            f"({', '.join(sorted(names))})")
        check_values(raw, kinds, name=lambda k: f"{own_path}: {k!r}")
        values.update(raw)
        sources.append(DLLM_GENERATION_FILE)
    return {k: v for k, v in values.items() if k in names}, sources


def generation_defaults_of(folder: str | Path, kinds: dict[str, tuple[type, bool]]) -> dict[str, Any]:
    """An export's recorded ``generation_defaults`` (dllm_config.json), else a checkpoint's files."""
    names = set(kinds)
    folder = Path(folder)
    meta = folder / EXPORT_CONFIG
    if meta.is_file():
        raw = read_json_object(meta).get("generation_defaults") or {}
        raw = {k: v for k, v in raw.items() if k in names}
        check_values(raw, kinds, name=lambda k: f"{meta}: generation_defaults {k!r}")
        return raw
    return checkpoint_generation_defaults(folder, kinds)[0]
