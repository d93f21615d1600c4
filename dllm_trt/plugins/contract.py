"""The graph contract of a ``dllm-trt export --plugins`` artefact (names only: no onnx, no torch).

A plugin graph keeps the caches in the graph: every layer's attention is a SubBlockCacheAttention
that writes the current tokens' keys/values into the cache and attends over it, and the logits
feed a ThresholdUnmask, so the decode step's unmasking happens where the logits are::

    inputs   input_ids [B, L] int64, position_ids [B, L] int64,
             attention_bias [B, 1, L, S] float32   over cache positions 0..S-1 after the write
             cache_position [B, L] int64            where each token's key/value goes (-1: nowhere)
             cache.{i}.key / .value [B, Hkv, T, D]  the preallocated caches (model dtype)
             unmask_tokens [B, L] int64, unmask_candidates [B, L] bool, unmask_threshold [1] float32
    outputs  logits [B, L, V] float32,
             cache_out.{i}.key / .value [B, Hkv, T, D]   the caches after the write: the same buffers
                                                       with the TensorRT plugin (bind the cache to
                                                       both), new tensors with the fallback
             new_tokens [B, L] int64, num_unmasked [B] int64, confidence [B, L] float32

Row r of the unmask inputs is logits row r: ``unmask_tokens[b, r]`` is the token at the position
that row predicts (position_ids[b, r] + the family's logit shift) and ``unmask_candidates`` marks
the rows the step may fill. ``plugins/subblock_cache.py`` turns the runtime's past + current
bias into the cache bias and write positions.
"""
from __future__ import annotations

UNMASK_INPUTS = ("unmask_tokens", "unmask_candidates", "unmask_threshold")
UNMASK_OUTPUTS = ("new_tokens", "num_unmasked", "confidence")
# Named dimensions (besides the model graph's batch / query_len / key_len)
CAPACITY = "capacity"


def cache_in_names(num_layers: int) -> list[str]:
    return [f"cache.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def cache_out_names(num_layers: int) -> list[str]:
    return [f"cache_out.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def plugin_input_names(num_layers: int) -> list[str]:
    return (["input_ids", "position_ids", "attention_bias", "cache_position"] + cache_in_names(num_layers)
            + list(UNMASK_INPUTS))


def plugin_output_names(num_layers: int) -> list[str]:
    return ["logits"] + cache_out_names(num_layers) + list(UNMASK_OUTPUTS)
