"""``--sweep threshold=0.5,0.9 block=8,16``: a grid of decode settings, and the marked winner.

Keys are GenerationConfig fields, plus ``block``: the block length of the bidirectional families
(``block_length``) and the sub-block length of block diffusion (``sub_block_length``). Sweeping
``threshold`` (or ``factor``) switches the strategy to that rule unless ``--strategy`` or a
``strategy`` key says otherwise.
"""
from __future__ import annotations

import dataclasses
import itertools

from ..errors import DllmError
from ..runtime import GenerationConfig
from ..runtime.settings import check_setting_values

ALIASES = {"sub_block": "sub_block_length", "gen": "gen_length"}
FLOATS = {"threshold", "factor", "temperature", "top_p", "low_threshold", "relaxed_threshold", "credit_alpha",
          "credit_gamma", "credit_decay", "sched_high", "sched_low", "dllm_refresh_ratio", "elastic_gamma"}
INTS = {"block", "block_length", "sub_block_length", "gen_length", "steps", "top_k", "seed", "radius", "draft_steps",
        "dllm_prompt_interval", "dllm_response_interval", "elastic_window"}
STRINGS = {"cache", "strategy", "sched_shape", "cache_refresh"}
WITHIN = 0.01  # "within 1 point" of the best exact match (fractions)


def parse_sweep(items: list[str] | None) -> dict[str, list]:
    """["threshold=0.5,0.9", "block=16,32"] -> {"threshold": [0.5, 0.9], "block": [16, 32]} (order kept)."""
    spec: dict[str, list] = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        key = ALIASES.get(key, key)
        if not sep or not values.strip():
            raise DllmError(f"--sweep item {item!r}: write KEY=V1,V2,... (e.g. threshold=0.5,0.9 block=16,32)")
        if key not in FLOATS | INTS | STRINGS:
            raise DllmError(f"--sweep key {key!r} is not a decode setting; use one of "
                            f"{', '.join(sorted(FLOATS | INTS | STRINGS))}")
        conv = float if key in FLOATS else int if key in INTS else str
        try:
            vals = [conv(v.strip()) for v in values.split(",") if v.strip()]
        except ValueError as e:
            raise DllmError(f"--sweep {key}: {e}") from e
        if key in spec:
            raise DllmError(f"--sweep names {key!r} twice")
        if key != "block":
            for v in vals:
                check_setting_values({key: v}, name=lambda k: f"--sweep {k}")
        else:
            for v in vals:
                check_setting_values({"block_length": v}, name=lambda k: "--sweep block")
        spec[key] = vals
    return spec


def grid(spec: dict[str, list]) -> list[dict]:
    """Every combination, the first key varying slowest; [{}] for no sweep."""
    keys = list(spec)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(spec[k] for k in keys))]


def label(point: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in point.items()) or "defaults"


def apply(base: GenerationConfig, point: dict, config, strategy_given: bool) -> GenerationConfig:
    """The base settings with one grid point applied, checked for the model (DllmError if invalid)."""
    attention = config.attention
    values = dataclasses.asdict(base)
    for key, v in point.items():
        if key == "block":
            values["block_length" if attention == "bidirectional" else "sub_block_length"] = v
        else:
            values[key] = v
    if not strategy_given and "strategy" not in point:
        if "threshold" in point:
            values["strategy"] = "threshold"
        elif "factor" in point:
            values["strategy"] = "factor"
    gen = GenerationConfig(**values)
    gen.resolved(attention)  # raises on a bad combination
    bs = config.block_size
    if attention == "block_causal" and bs and (gen.sub_block_length <= 0 or bs % gen.sub_block_length):
        raise DllmError(f"sub_block_length {gen.sub_block_length} must divide the model's block size {bs}")
    return gen


def mark(rows: list[dict]) -> tuple[int | None, str]:
    """Index of the fastest measured row within 1 point of the best exact match, and the rule used.

    Fastest = lowest mean latency per request (every setting decodes the same prompts).
    Without accuracy (synthetic prompts, no answers) it is the fastest row.
    """
    ok = [i for i, r in enumerate(rows) if r.get("status") == "ok"]
    if not ok:
        return None, "no setting ran"
    scored = [i for i in ok if rows[i].get("exact_match") is not None]
    if scored:
        best = max(rows[i]["exact_match"] for i in scored)
        pool = [i for i in scored if rows[i]["exact_match"] >= best - WITHIN - 1e-12]
        rule = "lowest mean latency per request among settings within 1 point of the best exact match"
    else:
        pool, rule = ok, "lowest mean latency per request (no accuracy measured)"
    return min(pool, key=lambda i: rows[i]["latency_ms_per_request"]["mean"]), rule
