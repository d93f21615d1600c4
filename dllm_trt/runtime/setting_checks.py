"""Types and ranges of decode settings a person gives (options, dllm_generation.json, generation_config.json,
profile --sweep), shared so a file is held to what the command line is. Field kinds come from the caller
(runtime.settings.field_kinds: GenerationConfig's annotations), so this module imports nothing of the runtime."""
from __future__ import annotations

import math

from ..errors import DllmError


def check_finite(name: str, value: float | None, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False) -> None:
    """Refuse NaN/inf and values outside [lo, hi] (``lo_open``: (lo, hi])."""
    if value is None:
        return
    bad = not math.isfinite(value) or (lo is not None and (value <= lo if lo_open else value < lo)) or (
        hi is not None and value > hi)
    if bad:
        low = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
        high = "" if hi is None else f"<= {hi}"
        rng = " and ".join(x for x in (low, high) if x) or "finite"
        raise DllmError(f"{name} {value} is out of range: it must be a finite number {rng}")


def check_min_int(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise DllmError(f"{name} {value} is out of range: it must be an integer >= {minimum}")


# (The library accepts threshold > 1, meaning "one token per step", and factor 0; from a person those are typos.)
# Numbers: (lo, hi, lo_open); integers: the minimum.
NUMBER_RANGES = {"threshold": (0.0, 1.0, True), "factor": (0.0, None, True), "temperature": (0.0, None, False),
                 "top_p": (0.0, 1.0, False), "low_threshold": (0.0, 1.0, False), "relaxed_threshold": (0.0, 1.0, False),
                 "credit_decay": (0.0, 1.0, False), "credit_alpha": (0.0, None, False), "sched_high": (0.0, None, False),
                 "sched_low": (0.0, None, False), "credit_gamma": (0.0, None, True),
                 "dllm_refresh_ratio": (0.0, 1.0, False), "elastic_gamma": (0.0, None, False),
                 "alg_temp": (0.0, None, False), "cfg_scale": (0.0, None, False)}
INT_MINIMUMS = {"gen_length": 1, "block_length": 1, "steps": 1, "sub_block_length": 1, "block_size": 1, "top_k": 0,
                "radius": 0, "draft_steps": 1, "dllm_prompt_interval": 1, "dllm_response_interval": 1,
                "elastic_window": 1, "seed": 0}
KIND_WORDS = {bool: "true or false", float: "a number", int: "an integer", str: "a string"}


def check_values(values: dict, kinds: dict[str, tuple[type, bool]], name=lambda key: key) -> None:
    """Refuse a value of the wrong type ("16" for an integer, "no" for a flag, null where a setting must be set)
    or out of range, naming it as ``name(key)`` spells it (the file and key, or the option); keys not in
    ``kinds`` (field -> (type, None allowed)) are left to the caller."""
    for key, v in values.items():
        if key not in kinds:
            continue
        kind, optional = kinds[key]
        if v is None:
            if optional:
                continue
            raise DllmError(f"{name(key)} is null: it needs {KIND_WORDS.get(kind, kind.__name__)}")
        ok = (isinstance(v, bool) if kind is bool else
              isinstance(v, (int, float)) and not isinstance(v, bool) if kind is float else
              isinstance(v, int) and not isinstance(v, bool) if kind is int else isinstance(v, kind))
        if not ok:
            raise DllmError(f"{name(key)} {v!r} is not {KIND_WORDS.get(kind, kind.__name__)}")
        if key in NUMBER_RANGES:
            lo, hi, lo_open = NUMBER_RANGES[key]
            check_finite(name(key), float(v), lo=lo, hi=hi, lo_open=lo_open)
        elif key in INT_MINIMUMS:
            check_min_int(name(key), v, INT_MINIMUMS[key])
        elif key == "eps" and not (math.isfinite(v) and 0.0 <= v < 1.0):
            raise DllmError(f"{name(key)} {v} is out of range: it must be a number >= 0 and < 1")
