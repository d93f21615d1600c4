"""The artefact contract: file names, tensor names, the format version and the reader.

This is the bottom layer: the exporter writes what this module names, and the runtime, the
engine builder and calibration read it through this module. It imports only numpy-free
standard library code and the config, so importing it never pulls in torch or onnx.

Graph contract (format 2; one graph for the prefill and every step of every cache mode)::

    inputs   input_ids       [B, L] int64
             position_ids    [B, L] int64
             attention_bias  [B, 1, L, P + L] float32   (0 = attend, -1e9 = masked)
             past_key_values.{i}.key / .value  [B, Hkv, P, D]   (model dtype; P may be 0)
             logits_index    [B, R] int64               query rows whose predictions the step reads
    outputs  tokens          [B, R] int64     top-1 token of each read row, the mask token excluded
             confidence      [B, R] float32   its softmax probability (the mask token excluded)
             margin          [B, R] float32   top-1 minus top-2 probability (Dream's topk_margin)
             neg_entropy     [B, R] float32   sum p log p over the row (Dream's entropy; the mask's p is 0)
             logits          [B, R, V] float32  the read rows' logits (debugging, validation, sampling)
             present.{i}.key / .value  [B, Hkv, L, D]   keys/values of the current tokens

The runtime owns one position-indexed cache [B, Hkv, C, D] per layer and passes the *whole*
buffer as the past (P = C, stale or unwritten positions masked by the bias), so no step copies
or slices the cache; it writes the presents of the tokens it keeps into the cache in place
(numpy on the host, one device kernel on the GPU). The language-model head runs only on the
``R`` rows in ``logits_index`` (a block, not the prompt), and the top-1 selection happens in the
graph: per step only ``B x R`` token ids and their statistics leave the device. The statistics
are computed with ArgMax + gather (the second best: ArgMax again after -inf at the first), Exp and
ReduceSum, never a ReduceMax over the vocabulary (slow on ONNX Runtime's CUDA provider).

Sampler graph (``sampler.onnx``, optional; export/sampler.py): sampling at temperature > 0 on the
device from the ``logits`` output the step left there::

    inputs   logits [B, R, V] float32, uniform [B, R] float64 (one draw per row, runtime.sampling),
             temperature [1] float64, top_k [1] int64 (1 when off), top_k_on [1] bool,
             top_p [1] float64, top_p_k [1] int64 (entries sorted for top-p: a prefix, or the padded V; a
             multiple of CDF_CHUNK, CDF_CHUNK when off), top_p_on [1] bool
    outputs  tokens [B, R] int64, confidence [B, R] float64 (the token's probability under the filtered
             distribution), margin / neg_entropy [B, R] float64 (of the tempered, unfiltered distribution),
             logit_gap [B, R] float64 (top-1 minus top-2 logit), nucleus_settled [B, R] bool (top_p_k < V:
             whether the sorted prefix decided top-p; where not, run again with top_p_k = padded V),
             raw_confidence [B, R] float64 (the drawn token's probability under the softmax of the logits
             before temperature and filters: what LLaDA's generate ranks by when it samples)

Cumulated sums (top-p's mass, the inverse CDF) are taken in runtime.sampling.chunked_cumsum's order: per
chunk of CDF_CHUNK entries, then the chunks' totals; rows are padded to whole chunks (``padded_vocab``).
A sampler graph records its chunk in its metadata (CDF_CHUNK_KEY); one without it is not used.

``sampler_dream.onnx`` is the same for Dream's ``sample_tokens`` (nucleus before top-k, every statistic of
the filtered distribution, at temperature 0 too) with one more input, ``draw_on [1] bool`` (false: argmax).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .config import ModelConfig
from .errors import DllmError

FORMAT_VERSION = 2  # bump when the graph contract or dllm_config.json changes incompatibly
CONFIG_FILE = "dllm_config.json"
# dllm_config.json's SHA-256 of its own other fields (config_digest), recorded with the file manifest when the
# folder is published: the manifest cannot hold the hash of the file it is written in. Absent in older folders.
CONFIG_DIGEST_KEY = "config_sha256"
MODEL_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"
SAMPLER_FILE = "sampler.onnx"
SAMPLER_INPUTS = ("logits", "uniform", "temperature", "top_k", "top_k_on", "top_p", "top_p_k", "top_p_on")
SAMPLER_OUTPUTS = ("tokens", "confidence", "margin", "neg_entropy", "logit_gap")
NUCLEUS_SETTLED = "nucleus_settled"  # [B, R] bool: the sorted prefix decided top-p (absent in older exports)
RAW_CONFIDENCE = "raw_confidence"  # [B, R] float64: LLaDA's confidence at temperature > 0 (absent in older exports)
DREAM_SAMPLER_FILE = "sampler_dream.onnx"  # Dream's sample_tokens (runtime.sampling.dream_probs)
DREAM_SAMPLER_INPUTS = SAMPLER_INPUTS + ("draw_on",)  # draw_on false: the argmax (temperature 0)
CDF_CHUNK = 64  # cumulated sums: sequential within chunks of this many entries, then over the chunks' totals
CDF_CHUNK_KEY = "dllm_trt.cdf_chunk"  # sampler graph metadata: its CDF_CHUNK (absent: an older sampler, not used)


def padded_vocab(vocab_size: int) -> int:
    """The vocabulary rounded up to whole CDF_CHUNK chunks: the sampler graph's sorted and cumulated rows."""
    return -(-vocab_size // CDF_CHUNK) * CDF_CHUNK


CACHE_LAYOUT = ("per-layer K/V [B, Hkv, C, D], position-indexed; the whole buffer is the past (P = C); "
                "present = current tokens, written into the cache in place by the runtime")

# --ops ort-cuda graphs hold ops of this domain, which ONNX Runtime's CUDA provider loads from a library built
# by `python -m dllm_trt.plugins.ort_cuda_build` (dllm_trt/plugins/ort_cuda_ops.cu); found through the
# environment variable, else beside the model.
CUDA_OPS_DOMAIN = "dllm_trt.cuda"
CUDA_OPS_LIBRARY = "libdllm_ort_cuda.so"
CUDA_OPS_ENV = "DLLM_TRT_ORT_CUDA_OPS"

# dllm_config.json "dtype" -> ONNX element type name of the keys/values
KV_TYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

# Named dimensions. key_len = past_len + query_len (ONNX cannot spell a sum).
BATCH, QUERY, PAST, KEYS, ROWS = "batch", "query_len", "past_len", "key_len", "rows"
SELECT_OUTPUTS = ("tokens", "confidence", "margin", "neg_entropy", "logits")
ROW_STATS = SELECT_OUTPUTS[:4]  # the [B, R] outputs every step downloads (logits only when sampling)


def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def input_names(num_layers: int) -> list[str]:
    return ["input_ids", "position_ids", "attention_bias"] + past_names(num_layers) + ["logits_index"]


def output_names(num_layers: int) -> list[str]:
    return list(SELECT_OUTPUTS) + present_names(num_layers)


def tensor_shapes(config: ModelConfig, kv_type: str) -> dict[str, tuple[str, list]]:
    """name -> (element type, dims) of every graph input and output."""
    c = config
    shapes: dict[str, tuple[str, list]] = {
        "input_ids": ("int64", [BATCH, QUERY]),
        "position_ids": ("int64", [BATCH, QUERY]),
        "attention_bias": ("float32", [BATCH, 1, QUERY, KEYS]),
        "logits_index": ("int64", [BATCH, ROWS]),
        "tokens": ("int64", [BATCH, ROWS]),
        "confidence": ("float32", [BATCH, ROWS]),
        "margin": ("float32", [BATCH, ROWS]),
        "neg_entropy": ("float32", [BATCH, ROWS]),
        "logits": ("float32", [BATCH, ROWS, c.vocab_size]),
    }
    shapes.update({n: (kv_type, [BATCH, c.num_kv_heads, PAST, c.head_dim]) for n in past_names(c.num_layers)})
    shapes.update({n: (kv_type, [BATCH, c.num_kv_heads, QUERY, c.head_dim]) for n in present_names(c.num_layers)})
    return shapes


def read_artifact_config(artifact_dir: str | Path) -> dict[str, Any]:
    """Parse and check ``dllm_config.json``; raises DllmError that says how to fix the folder."""
    d = Path(artifact_dir)
    if not d.is_dir():
        raise DllmError(f"artefact folder {d} does not exist; make one with `dllm-trt export --model CKPT --out {d}`")
    path = d / CONFIG_FILE
    if not path.is_file():
        hint = (" (it holds config.json: that is a checkpoint folder; export it first with "
                f"`dllm-trt export --model {d} --out OUT`)") if (d / "config.json").is_file() else ""
        raise DllmError(f"{path} is missing: {d} is not a dllm-trt export{hint}")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DllmError(f"{path} is not valid JSON ({e}); re-export the model with `dllm-trt export`") from e
    from . import __version__

    fmt = meta.get("format_version") if isinstance(meta, dict) else None
    if fmt != FORMAT_VERSION:
        made_by = meta.get("dllm_trt_version", "an unknown version") if isinstance(meta, dict) else "an unknown version"
        engine = isinstance(meta, dict) and "engine" in meta
        redo = ("Rebuild the engine with this version (`dllm-trt export`, then `dllm-trt build`)" if engine else
                "Re-export the checkpoint with this version (`dllm-trt export --model CKPT --out DIR`)")
        raise DllmError(f"{d} was {'built' if engine else 'exported'} by dllm-trt {made_by} in artefact format "
                        f"{fmt!r}; this dllm-trt {__version__} reads format {FORMAT_VERSION}. {redo} or use the "
                        "dllm-trt that made it.")
    if config_edited(meta):
        raise DllmError(f"{path} was edited after dllm-trt wrote it (its content no longer matches its "
                        f"{CONFIG_DIGEST_KEY}), so its shapes, dtypes and token ids cannot be trusted; "
                        f"{redo_hint(meta)}, or put the original file back")
    for key in ("hf_config", "dtype", "inputs", "outputs"):
        if key not in meta:
            raise DllmError(f"{path} lacks {key!r}; re-export the model with `dllm-trt export`")
    return meta


def config_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of dllm_config.json's fields but its own digest, as canonical JSON (sorted keys, no spaces): any
    changed value changes it, re-indenting the file does not. Hashing one small parsed file keeps loading cheap."""
    body = {k: v for k, v in meta.items() if k != CONFIG_DIGEST_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def config_edited(meta: dict[str, Any]) -> bool:
    """True when dllm_config.json records a digest that its content no longer matches (edited after publishing);
    one without a digest (an older dllm-trt, or a folder still being written) is not judged here."""
    recorded = meta.get(CONFIG_DIGEST_KEY)
    return recorded is not None and recorded != config_digest(meta)


def redo_hint(meta: dict[str, Any]) -> str:
    """How to remake the folder ``meta`` describes: rebuild an engine, quantize again, or re-export."""
    if "engine" in meta:
        return "rebuild the engine (`dllm-trt build --onnx EXPORT --out DIR`)"
    if "quantization" in meta:
        return "quantize the export again (`dllm-trt quantize --onnx EXPORT --out DIR --method ...`)"
    return "re-export the checkpoint (`dllm-trt export --model CKPT --out DIR`)"


def config_from_artifact(meta: dict[str, Any], source: str = CONFIG_FILE) -> ModelConfig:
    """Rebuild the ModelConfig from the stored upstream config and check it against the stored fields."""
    cfg = ModelConfig.from_dict(meta["hf_config"], source=source)
    stored = meta.get("model_config") or {}
    for name, value in stored.items():
        mine = getattr(cfg, name, None)
        if isinstance(mine, tuple):
            mine = list(mine)
        if name != "extra" and mine != value:
            raise DllmError(f"{source}: model_config.{name} is {value!r} but hf_config gives {mine!r}; "
                            "the artefact is inconsistent, re-export it")
    return cfg


def file_sha256(path: str | Path, chunk: int = 8 << 20) -> str:
    """SHA-256 of a file, read in chunks (the engine record's checksum)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def cuda_ops_library(artifact_dir: str | Path) -> Path:
    """The CUDA custom-op library an ``--ops ort-cuda`` graph needs: $DLLM_TRT_ORT_CUDA_OPS, else
    ``libdllm_ort_cuda.so`` in the artefact folder; a DllmError that says how to build it otherwise."""
    import os

    env = os.environ.get(CUDA_OPS_ENV)
    path = Path(env) if env else Path(artifact_dir) / CUDA_OPS_LIBRARY
    if not path.is_file():
        where = f"${CUDA_OPS_ENV} names {path}, which does not exist" if env else f"{path} is missing"
        raise DllmError(f"{artifact_dir} was exported with --ops ort-cuda and needs the project's CUDA ops for ONNX "
                        f"Runtime ({where}); build them on a machine with nvcc and ONNX Runtime's C/C++ headers: "
                        f"python -m dllm_trt.plugins.ort_cuda_build --out {Path(artifact_dir) / CUDA_OPS_LIBRARY} "
                        f"(or set {CUDA_OPS_ENV} to a built library), or export with --ops ort")
    return path
