"""Checks of command-line options that argparse cannot express: ranges, options that do not apply to
the model at hand (refused rather than silently ignored), the device, and the folder's integrity."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import DllmError
from .runtime.setting_checks import check_finite, check_min_int
from .runtime.settings import GenerationConfig, check_setting_values


# the ranges of a decode setting are the library's (runtime/setting_checks.py), whoever gives it
finite = check_finite
positive_int = check_min_int


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
    """Types and ranges of the decode options given on the command line (runtime.settings.check_setting_values,
    as for dllm_generation.json and --sweep)."""
    given = {f: getattr(args, f) for f in GenerationConfig.__dataclass_fields__ if getattr(args, f, None) is not None}
    check_setting_values(given, name=lambda key: "--" + key.replace("_", "-"))


def check_decode_options(args: argparse.Namespace, gen, config, longest_prompt: int) -> None:
    """Options that would be silently ignored by this model or strategy, and lengths past the model's window."""
    check_decode_values(args)
    limit = config.max_position_embeddings
    if longest_prompt + gen.gen_length > limit:
        room = limit - longest_prompt
        if config.attention == "bidirectional" and gen.block_length and room >= gen.block_length:
            room -= room % gen.block_length  # the gen length is whole blocks
        fix = (f"use --gen-length {room} or less" if longest_prompt < limit else
               f"shorten the prompt to at most {max(limit - gen.gen_length, 1)} tokens")
        raise DllmError(f"--gen-length {gen.gen_length} plus the prompt ({longest_prompt} tokens) exceeds the "
                        f"model's {limit} positions; {fix}")
    from .runtime.decode import DREAM_ALGS
    from .runtime.settings import THRESHOLD_RULES

    resolved = gen.resolved(config.attention)
    filters = [f"--{n.replace('_', '-')}" for n in ("top_k", "top_p") if getattr(args, n, None) is not None]
    if filters and resolved.temperature == 0 and resolved.strategy not in DREAM_ALGS:
        one = len(filters) == 1
        raise DllmError(f"{' and '.join(filters)} {'applies' if one else 'apply'} to sampling (--temperature > 0) "
                        "and this decode is greedy (only Dream's strategies read them at temperature 0): add "
                        f"--temperature or drop {'it' if one else 'them'}")
    if getattr(args, "read_one_block_prompt", False) and not (config.attention == "block_causal" and config.logits_shift):
        raise DllmError(f"--read-one-block-prompt applies to Fast-dLLM v2-style block diffusion (shifted logits); "
                        f"{config.model_type} reads every prompt: drop it")
    if getattr(args, "batch_sample", False) and not (config.attention == "block_causal" and config.logits_shift):
        raise DllmError(f"--batch-sample reproduces Fast-dLLM v2's eval harness (block diffusion with shifted "
                        f"logits); {config.model_type} has no such harness: drop it")
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


def _writable_ancestor(option: str, path: str, start: Path) -> None:
    """The nearest existing folder at or above ``start`` must be a folder this process can write in (found
    before the work, not as a traceback after it)."""
    anc = start
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise DllmError(f"{option} {path}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise DllmError(f"{option} {path}: {anc} is not writable here; pick a path you can write to")


def check_output_dir(option: str, path: str | None) -> None:
    """A folder to write into (built beside itself, then renamed): refuse an existing file, a file on the
    way, or a parent this process cannot write in."""
    if path is None:
        return
    p = Path(path)
    if p.is_symlink():  # the folder is renamed into place: the link itself would be replaced, not its target
        raise DllmError(f"{option} {path} is a symbolic link (to {os.readlink(p)}); pass the folder it points to")
    if p.exists() and not p.is_dir():
        raise DllmError(f"{option} {path} is a file; it needs a folder path (it is created if missing)")
    _writable_ancestor(option, path, p.absolute().parent)


def check_output_file(option: str, path: str | None) -> None:
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise DllmError(f"{option} {path} is a folder; give a file path")
    _writable_ancestor(option, path, p.absolute().parent)


def check_output_paths(args: argparse.Namespace) -> None:
    """Every output path of a command, checked before the command's work: ``--out`` / ``--workdir`` /
    ``--plots`` are folders, ``--csv`` / ``--json`` files (``-`` is stdout), and the options a command declares
    with ``set_defaults(output_files=(...))`` (calibrate's ``--out`` .npz)."""
    files = set(getattr(args, "output_files", ())) | {"csv", "json"}
    for name in ("out", "workdir", "plots", "csv", "json"):
        value = getattr(args, name, None)
        if not isinstance(value, str) or value == "-":
            continue
        (check_output_file if name in files else check_output_dir)("--" + name, value)
