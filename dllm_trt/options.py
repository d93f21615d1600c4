"""Checks of command-line options that argparse cannot express: ranges, options that do not apply to
the model at hand (refused rather than silently ignored), the device, and the folder's integrity."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .errors import DllmError


def finite(name: str, value: float | None, lo: float | None = None, hi: float | None = None,
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


def positive_int(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise DllmError(f"{name} {value} is out of range: it must be an integer >= {minimum}")


METHOD_OPTIONS = {  # GenerationConfig field -> (type, strategies it applies to, help)
    "low_threshold": (float, ("hierarchy",), "hierarchy: a run of masks commits its most confident token above this"),
    "relaxed_threshold": (float, ("local_leap",), "local_leap: the threshold within --radius of an anchor"),
    "radius": (int, ("local_leap",), "local_leap: an anchor's neighbourhood, in positions"),
    "credit_alpha": (float, ("credit",), "credit: weight of log(1 + credit) added to the logits"),
    "credit_gamma": (float, ("credit",), "credit: a step adds p ** gamma to its favourite's credit"),
    "credit_decay": (float, ("credit",), "credit: decay of the credits per step"),
    "sched_high": (float, ("sched",), "sched: logit-margin threshold at a block's first step"),
    "sched_low": (float, ("sched",), "sched: logit-margin threshold at a block's last step"),
    "sched_shape": (str, ("sched",), "sched: linear | cosine | exp"),
    "draft_steps": (int, ("freedave",), "freedave: schedule steps drafted and verified per forward"),
}


REFRESH_OPTIONS = {  # GenerationConfig field -> (type, cache_refresh policy it applies to, help)
    "dllm_prompt_interval": (int, "dllm_cache", "dllm_cache: refresh the prompt's keys/values every N steps"),
    "dllm_response_interval": (int, "dllm_cache", "dllm_cache: refresh the response's keys/values every N steps"),
    "dllm_refresh_ratio": (float, "dllm_cache", "dllm_cache: fraction of the response recomputed on the other "
                           "steps (changed tokens first, then the longest unrefreshed)"),
    "elastic_window": (int, "elastic", "elastic: the block's first N masks are computed (and filled) per step"),
    "elastic_gamma": (float, "elastic", "elastic: refresh the cache when the window's prediction similarity to "
                      "the previous step falls below this (> 1: every step)"),
}


def add_method_options(p: argparse.ArgumentParser) -> None:
    """The knobs of the later decoding methods (hierarchy, local_leap, credit, sched, freedave) and of the cache
    refresh policies (dllm_cache, elastic)."""
    for name, (kind, _, text) in METHOD_OPTIONS.items():
        extra = {"choices": ["linear", "cosine", "exp"]} if name == "sched_shape" else {}
        p.add_argument("--" + name.replace("_", "-"), type=kind, help=text, **extra)
    from .runtime.settings import CACHE_REFRESH

    p.add_argument("--cache-refresh", choices=list(CACHE_REFRESH),
                   help="when the prefix/dual cache is recomputed: block (Fast-dLLM, default), dllm_cache "
                   "(dLLM-Cache's intervals), elastic (Elastic-Cache's window and drift test)")
    for name, (kind, _, text) in REFRESH_OPTIONS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, help=text)


def check_decode_values(args: argparse.Namespace) -> None:
    """Ranges of the decode options given on the command line. (The library accepts threshold > 1, meaning
    "one token per step", and factor 0; on the command line those are typos and are refused.)"""
    finite("--threshold", getattr(args, "threshold", None), lo=0.0, hi=1.0, lo_open=True)
    finite("--factor", getattr(args, "factor", None), lo=0.0, lo_open=True)
    finite("--temperature", getattr(args, "temperature", None), lo=0.0)
    finite("--top-p", getattr(args, "top_p", None), lo=0.0, hi=1.0)
    eps = getattr(args, "eps", None)
    if eps is not None and not (math.isfinite(eps) and 0.0 <= eps < 1.0):
        raise DllmError(f"--eps {eps} is out of range: it must be a number >= 0 and < 1")
    for name in ("gen_length", "block_length", "steps", "sub_block_length", "block_size"):
        positive_int("--" + name.replace("_", "-"), getattr(args, name, None))
    positive_int("--top-k", getattr(args, "top_k", None), minimum=0)
    for name in ("low_threshold", "relaxed_threshold", "credit_decay"):
        finite("--" + name.replace("_", "-"), getattr(args, name, None), lo=0.0, hi=1.0)
    for name in ("credit_alpha", "sched_high", "sched_low"):
        finite("--" + name.replace("_", "-"), getattr(args, name, None), lo=0.0)
    finite("--credit-gamma", getattr(args, "credit_gamma", None), lo=0.0, lo_open=True)
    positive_int("--radius", getattr(args, "radius", None), minimum=0)
    positive_int("--draft-steps", getattr(args, "draft_steps", None))
    for name in ("dllm_prompt_interval", "dllm_response_interval", "elastic_window"):
        positive_int("--" + name.replace("_", "-"), getattr(args, name, None))
    finite("--dllm-refresh-ratio", getattr(args, "dllm_refresh_ratio", None), lo=0.0, hi=1.0)
    finite("--elastic-gamma", getattr(args, "elastic_gamma", None), lo=0.0)
    positive_int("--seed", getattr(args, "seed", None), minimum=0)


def check_decode_options(args: argparse.Namespace, gen, config, longest_prompt: int) -> None:
    """Options that would be silently ignored by this model or strategy, and lengths past the model's window."""
    check_decode_values(args)
    limit = config.max_position_embeddings
    if longest_prompt + gen.gen_length > limit:
        fix = (f"use --gen-length {limit - longest_prompt} or less" if longest_prompt < limit else
               f"shorten the prompt to at most {max(limit - gen.gen_length, 1)} tokens")
        raise DllmError(f"--gen-length {gen.gen_length} plus the prompt ({longest_prompt} tokens) exceeds the "
                        f"model's {limit} positions; {fix}")
    from .runtime.settings import THRESHOLD_RULES

    resolved = gen.resolved(config.attention)
    given = lambda name: getattr(args, name, None) is not None  # noqa: E731
    if given("threshold") and resolved.strategy not in ("confidence_threshold", *THRESHOLD_RULES):
        raise DllmError(f"--threshold applies to the threshold rules only ({', '.join(THRESHOLD_RULES)}; the "
                        f"strategy here is {resolved.strategy}); add --strategy threshold or drop --threshold")
    for name, (_, strategies, _) in METHOD_OPTIONS.items():
        if given(name) and resolved.strategy not in strategies:
            raise DllmError(f"--{name.replace('_', '-')} applies to --strategy {' / '.join(strategies)} only (the "
                            f"strategy here is {resolved.strategy}); add --strategy {strategies[0]} or drop it")
    for name, (_, policy, _) in REFRESH_OPTIONS.items():
        if given(name) and resolved.cache_refresh != policy:
            raise DllmError(f"--{name.replace('_', '-')} applies to --cache-refresh {policy} only (here it is "
                            f"{resolved.cache_refresh}); add --cache-refresh {policy} or drop it")
    if given("factor") and resolved.strategy != "factor":
        raise DllmError(f"--factor applies to --strategy factor only (the strategy here is {resolved.strategy}); "
                        "add --strategy factor or drop --factor")
    if config.attention == "bidirectional" and given("sub_block_length"):
        raise DllmError(f"--sub-block-length applies to block-diffusion models only; {config.model_type} decodes "
                        "semi-autoregressive blocks: use --block-length")
    if config.attention == "block_causal" and given("block_length"):
        raise DllmError(f"--block-length does not apply to block diffusion ({config.model_type} uses its own block "
                        f"of {config.block_size}, or --block-size); use --sub-block-length for its sub-blocks")
    if config.attention == "bidirectional" and given("block_size"):
        raise DllmError(f"--block-size applies to block-diffusion models only; {config.model_type} decodes "
                        "semi-autoregressive blocks: use --block-length")
    from .runtime.settings import DREAM_SCHEDULED

    if given("eps") and resolved.strategy not in DREAM_SCHEDULED:
        raise DllmError(f"--eps applies to Dream's scheduled strategies only ({', '.join(DREAM_SCHEDULED)}; the "
                        f"strategy here is {resolved.strategy}); drop --eps")


def warn_unknown_characters(tok, prompts: list[str]) -> None:
    """Say so when the tokenizer turns parts of a prompt into its unknown token (the model never sees them)."""
    for p in prompts:
        pieces = tok.unknown_pieces(p)
        if pieces:
            shown = ", ".join(repr(x) for x in dict.fromkeys(pieces))
            print(f"warning: prompt {p!r}: {shown} not in the tokenizer's vocabulary; they become {tok.unk_token}",
                  file=sys.stderr)


def check_device(device: str) -> None:
    """``cpu``, ``cuda`` or ``cuda:N``, and CUDA only where torch sees a GPU."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise DllmError(f"--device {device}: use cpu, cuda or cuda:N")
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise DllmError(f"--device {device}: torch {torch.__version__} sees no CUDA GPU here; use --device cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise DllmError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices here")


def require_intact(folder: Path, full_hash: bool = False) -> None:
    """Refuse a folder whose files do not match the manifest in its dllm_config.json (sizes; hashes on request)."""
    from .integrity import require_intact as check

    if (folder / "dllm_config.json").is_file():  # otherwise the backend says what the folder lacks
        check(folder, full_hash=full_hash, warn=lambda s: print(s, file=sys.stderr))


def check_output_dir(option: str, path: str | None) -> None:
    """A folder to write into: refuse an existing file (found before the work, not after it)."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise DllmError(f"{option} {path} is a file; it needs a folder path (it is created if missing)")


def check_output_file(option: str, path: str | None) -> None:
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise DllmError(f"{option} {path} is a folder; give a file path")
    if p.parent != Path("") and p.parent.exists() and not p.parent.is_dir():
        raise DllmError(f"{option} {path}: {p.parent} is a file, not a folder")
