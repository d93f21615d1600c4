"""What a decode run is asked to do, and what it reports back."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import DllmError
from .setting_checks import check_values
from .unmask import SCHED_SHAPES

# Dream's diffusion_generate algorithms keep their upstream names (generation_config.json's "alg").
DREAM_SCHEDULED = ("maskgit_plus", "topk_margin", "entropy")  # Dream's timestep schedule, ranked by a statistic
# Later runtime-only methods (runtime/unmask.py, runtime/methods.py): dInfer's hierarchical and credit decoding,
# LocalLeap (threshold rules, run until the block is filled) and SchED (LLaDA's schedule with an early exit).
METHODS = ("hierarchy", "credit", "local_leap", "sched", "freedave")
STRATEGIES = ("low_confidence", "random", "threshold", "factor", "sequential", *DREAM_SCHEDULED, "confidence_threshold",
              *METHODS)
# Upstream names of decode rules that are named otherwise here, or have no counterpart: what to use instead.
UPSTREAM_STRATEGY_NAMES = {
    "low_confidence_static": "SDAR's low_confidence_static is --strategy low_confidence here (steps = its "
                             "denoising_steps)",
    "low_confidence_dynamic": "SDAR's low_confidence_dynamic is --strategy threshold here (--threshold = its "
                              "confidence_threshold, 0.85 by default; steps = its denoising_steps)",
    "entropy_bounded": "SDAR's entropy_bounded has no counterpart: its generate.py (JetAstra/SDAR c2041a8) raises "
                       "UnboundLocalError at the first step (transfer_index is set by the other strategies only); "
                       "use --strategy threshold",
    "origin": "Dream's alg='origin' has no counterpart: its transfers are draws of torch's random generator; use "
              "--strategy entropy (Dream's examples) or maskgit_plus",
}


def unknown_strategy(name: str) -> str:
    """The error for a strategy name this loop does not run: an upstream name says what to use instead."""
    hint = UPSTREAM_STRATEGY_NAMES.get(name)
    return f"unknown strategy {name!r}: {hint}" if hint else \
        f"unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}"


def strategy_arg(name: str) -> str:
    """argparse ``type`` of --strategy: an upstream name gets its hint instead of argparse's bare list."""
    if name in UPSTREAM_STRATEGY_NAMES:
        import argparse

        raise argparse.ArgumentTypeError(unknown_strategy(name))
    return name


SCHEDULED = ("low_confidence", "random", "sequential", "sched", "freedave")  # strategies that follow LLaDA's even per-step count
STEPPED = SCHEDULED + DREAM_SCHEDULED + ("confidence_threshold",)  # strategies with a step budget per block
BLOCK_STRATEGIES = ("low_confidence", "random", "threshold", "factor", "sequential", "hierarchy", "credit",
                    "local_leap", "sched")
THRESHOLD_RULES = ("threshold", "hierarchy", "credit", "local_leap")  # strategies that read ``threshold``
STRATEGIES_FOR = {"bidirectional": STRATEGIES, "block_causal": BLOCK_STRATEGIES}  # by ModelConfig.attention
CACHE_MODES = {
    "bidirectional": ("none", "prefix", "dual"),
    "block_causal": ("none", "block", "sub_block"),
}
# When the prefix/dual caches refresh (runtime/cache_refresh.py): Fast-dLLM's full forward at the start of every
# block, dLLM-Cache's interval schedule with a partial refresh in between, or Elastic-Cache's sliding window with
# a drift test that triggers the refresh.
CACHE_REFRESH = ("block", "dllm_cache", "elastic")
REFRESH_CACHES = ("prefix", "dual")  # the cache modes a refresh policy other than "block" runs on


def cache_modes_for(strategy: str, attention: str) -> tuple[str, ...]:
    """The cache modes a strategy runs with on a model of this attention (FreeDave: no cache)."""
    return ("none",) if strategy == "freedave" else CACHE_MODES[attention]


@dataclass
class GenerationConfig:
    """Decoding settings shared by every backend.

    ``steps`` applies to the schedule strategies (``low_confidence``/``random``/``sequential``):
    the LLaDA schedule spreads ``steps`` evenly over ``gen_length / block_length`` blocks.
    ``threshold`` and ``factor`` are the Fast-dLLM parallel rules and run until each block is filled.
    Block-diffusion models use their own block size (``bd_size``) and decode it in
    sub-blocks of ``sub_block_length``; there ``steps`` is SDAR's ``denoising_steps`` per block
    (None: one token per step), split evenly over the block's sub-blocks: each step fills the
    schedule's count (``threshold``: everything above the threshold, at least that count).
    ``sequential`` (SDAR) fills the count left to right.

    Dream's algorithms (bidirectional): ``maskgit_plus`` / ``topk_margin`` / ``entropy`` rank the
    masked positions by top-1 probability / top-1 minus top-2 probability / sum p log p and fill
    ``int(n * (1 - s/t))`` of the block's ``n`` masks per step, ``t, s`` from
    ``linspace(1, 1e-3, steps_per_block + 1)`` (all on the last step); with ``alg_temp > 0`` the
    positions are drawn from softmax(statistic / alg_temp) instead. ``confidence_threshold`` is
    Fast-dLLM's: a budget of ``block_length / steps_per_block`` per step, the most confident always
    taken, the others only at ``>= threshold``, the rest carried to the next step (steps added at
    the end until the block is filled).

    Later runtime-only methods (sources and deviations in runtime/unmask.py and runtime/methods.py):
    ``hierarchy`` (dInfer): above ``threshold``, plus the most confident of each run of consecutive masks
    when above ``low_threshold``; ``local_leap`` (LocalLeap): ``threshold`` anchors, ``relaxed_threshold``
    within ``radius`` positions of one; ``credit`` (dInfer): the threshold rule on probabilities fused with a
    decaying credit of each position's repeated favourite (``credit_alpha``, ``credit_gamma``,
    ``credit_decay``); ``sched`` (SchED): LLaDA's low-confidence schedule of ``steps`` that commits the whole
    block once the mean top-1/top-2 logit margin of its masked positions reaches a threshold falling from
    ``sched_high`` to ``sched_low`` over the block's steps (``sched_shape``: linear, cosine or exp);
    ``freedave`` (FreeDave, runtime/freedave.py): the tokens of the low-confidence schedule of ``steps``,
    exactly, in fewer forwards: each forward verifies ``draft_steps`` drafted steps at once (no cache,
    temperature 0).

    Dream's sampler options: ``top_p`` / ``top_k`` filter the distribution its statistics are read from
    at every temperature (at temperature 0 too, as Dream's ``sample_tokens``: the top-1 probability, the
    margin and the entropy are those of the nucleus / top-k distribution), and ``eps`` ends its timestep
    schedule. Either filter makes the step read the rows' logits (the sampling path: slower, exact).

    LLaDA's ``generate`` options (ML-GSAI/LLaDA generate.py; its Appendix B.4): ``logits_eos_inf`` sets
    the EOS logit to -inf before the proposal (EOS is never generated); ``confidence_eos_eot_inf`` ranks
    a position whose proposal is EOS or EOT last: its confidence is the probability of the proposal with
    EOS and EOT left out of the softmax (0 for EOS / EOT themselves), and with the schedule the ties
    among those zeros go in torch's CPU top-k order over LLaDA's row (position 0 .. prompt + gen_length),
    as upstream. The ids are the model's: config.json's ``eos_token_id`` (the first when it lists
    several) and the tokenizer's ``<|eot_id|>`` (LLaDA-8B: 126081 and 126348, the ids upstream
    hard-codes). Both need each read row's logits, so they take the sampling path (the rows' logits come
    to the host: slower than the device-side top-1, exact).

    Block diffusion: ``block_size`` decodes in blocks of that many tokens instead of the model's own
    (config.json ``block_size`` / ``bd_size``), as SDAR's ``block_length`` and Fast-dLLM v2's
    ``block_size`` arguments do: the block-causal attention, the prefill and the commits all follow it.

    ``cache_refresh`` (bidirectional, prefix/dual cache; sources and deviations in runtime/cache_refresh.py):
    ``block`` is Fast-dLLM's full forward at the start of every block. ``dllm_cache`` (dLLM-Cache): a full
    forward every ``dllm_prompt_interval`` steps for the prompt and every ``dllm_response_interval`` steps for
    the response; in between, besides the rows the cache mode always computes, ``dllm_refresh_ratio`` of the
    response's positions are recomputed (those whose token changed since their keys/values were written, then
    the longest unrefreshed). ``elastic`` (Elastic-Cache): a step computes only the first
    ``elastic_window`` masks of the block (dual; prefix: every mask from the block on) and the positions
    decoded since their keys/values were written; when the window's predictions drift (mean similarity of
    the still-masked positions' top-1 token and probability to the previous step's below ``elastic_gamma``)
    the step is redone by a full forward that refreshes the whole cache.
    """

    gen_length: int = 32
    block_length: int = 32
    steps: int | None = None  # default: gen_length (one token per step)
    strategy: str = "low_confidence"
    threshold: float = 0.9
    factor: float = 1.0
    cache: str | None = None  # default: "none" (bidirectional), "sub_block" (block diffusion)
    sub_block_length: int = 8
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    alg_temp: float = 0.0  # Dream: > 0 draws the positions to fill instead of taking the top ones
    eps: float = 1e-3  # Dream: the timestep schedule runs linspace(1, eps, steps_per_block + 1) (its ``eps``)
    cfg_scale: float = 0.0  # LLaDA's unsupervised classifier-free guidance (its generate's cfg_scale); no cache
    logits_eos_inf: bool = False  # LLaDA generate's logits_eos_inf: EOS is never proposed
    confidence_eos_eot_inf: bool = False  # LLaDA generate's confidence_eos_eot_inf: EOS / EOT rank last
    block_size: int | None = None  # block diffusion: the block decoded (SDAR block_length); None: the model's
    read_one_block_prompt: bool = False  # Fast-dLLM v2: False, as its generate, reads no prompt of exactly
    # block_size tokens (it decodes from no prompt); True reads it (a checkpoint's dllm_generation.json may say so)
    batch_sample: bool = False  # Fast-dLLM v2: decode the batch as its eval harness batch_sample does (one grid of
    # blocks, the batch's decisions; runtime/batch_sample.py): a row's tokens then depend on its batch
    seed: int = 0
    stop_at_eos: bool = True
    low_threshold: float = 0.4  # hierarchy: a run's most confident position is taken above this
    relaxed_threshold: float = 0.75  # local_leap: threshold near an anchor
    radius: int = 4  # local_leap: neighbourhood of an anchor, in positions
    credit_alpha: float = 0.7  # credit: weight of log(1 + credit) added to the logits
    credit_gamma: float = 0.2  # credit: a step adds p ** gamma to its top-1 token's credit
    credit_decay: float = 0.8  # credit: credits decay by this factor every step
    sched_high: float = 6.0  # sched: logit-margin threshold at the block's first step
    sched_low: float = 2.0  # sched: ... and at its last
    sched_shape: str = "linear"  # sched: linear | cosine | exp
    draft_steps: int = 4  # freedave: steps drafted (and verified) per forward
    cache_refresh: str = "block"  # block | dllm_cache | elastic (prefix/dual caches; see CACHE_REFRESH)
    dllm_prompt_interval: int = 100  # dllm_cache: the prompt's keys/values are refreshed every this many steps
    dllm_response_interval: int = 7  # dllm_cache: the response's every this many steps
    dllm_refresh_ratio: float = 0.25  # dllm_cache: fraction of the response recomputed on the other steps
    elastic_window: int = 16  # elastic: masks of the block a step computes (and may fill)
    elastic_gamma: float = 0.9  # elastic: refresh when the window's prediction similarity falls below this

    def resolved(self, attention: str) -> "GenerationConfig":
        """A copy with defaults filled in for this attention family; raises on bad combinations."""
        c = GenerationConfig(**asdict(self))
        modes = CACHE_MODES[attention]
        if c.cache is None:
            c.cache = "none" if attention == "bidirectional" else "sub_block"
        if c.cache not in modes:
            raise DllmError(f"cache mode {c.cache!r} does not apply to a {attention} model; use one of {', '.join(modes)}")
        if c.strategy not in STRATEGIES:
            raise DllmError(unknown_strategy(c.strategy))
        if c.gen_length <= 0:
            raise DllmError("gen_length must be positive")
        if attention == "bidirectional":
            if c.block_length <= 0 or c.gen_length % c.block_length:
                raise DllmError(f"gen_length {c.gen_length} is not divisible by block_length {c.block_length}; "
                                "pick a block_length that divides gen_length")
            blocks = c.gen_length // c.block_length
            if c.steps is None:
                c.steps = c.gen_length
            if c.strategy in STEPPED and (c.steps <= 0 or c.steps % blocks):
                raise DllmError(f"steps {c.steps} must be a positive multiple of the number of blocks ({blocks} = "
                                f"gen_length {c.gen_length} / block_length {c.block_length}); pass --steps "
                                f"{c.gen_length} (one token per step) or another multiple of {blocks}")
            # Dream's own diffusion_generate splits the block's masks evenly over the steps (it asserts so);
            # Fast-dLLM's block variant (a prefix / dual cache) ignores the steps for this alg and fills each
            # block until no mask is left (generation_utils_block.py), so any steps it accepts will do.
            block_variant = c.cache != "none" and c.cache_refresh == "block"
            if c.strategy == "confidence_threshold" and not block_variant and c.block_length % (c.steps // blocks):
                raise DllmError(f"confidence_threshold needs block_length {c.block_length} divisible by the steps per "
                                f"block ({c.steps // blocks}); pick steps so that each step has a whole budget")
        elif c.strategy not in BLOCK_STRATEGIES:
            raise DllmError(f"strategy {c.strategy!r} is for the bidirectional families (LLaDA, Dream); a "
                            f"block-diffusion model uses {', '.join(BLOCK_STRATEGIES)}")
        elif c.sub_block_length <= 0:
            raise DllmError(f"sub_block_length {c.sub_block_length} must be positive")
        elif c.steps is not None and c.steps <= 0:
            raise DllmError(f"steps {c.steps} must be positive (denoising steps per block), or None for one "
                            "token per step")
        if not 0.0 <= c.top_p <= 1.0 or c.top_k < 0 or not c.temperature >= 0 or not math.isfinite(c.temperature):
            raise DllmError(f"need a finite temperature >= 0 (got {c.temperature}), top_k >= 0 (got {c.top_k}) "
                            f"and 0 <= top_p <= 1 (got {c.top_p})")
        if not c.alg_temp >= 0 or not math.isfinite(c.alg_temp):
            raise DllmError(f"alg_temp {c.alg_temp} must be a finite number >= 0")
        if math.isnan(c.threshold) or math.isnan(c.factor):
            raise DllmError(f"threshold ({c.threshold}) and factor ({c.factor}) must be numbers, not NaN")
        if c.seed < 0:
            raise DllmError(f"seed {c.seed} must be >= 0")
        if not 0.0 <= c.eps < 1.0:
            raise DllmError(f"eps {c.eps} must be a number in [0, 1) (Dream's timestep schedule ends there)")
        if c.batch_sample and (attention != "block_causal" or c.strategy != "threshold" or c.temperature != 0.0
                               or c.cache not in ("block", "sub_block")):
            raise DllmError("batch_sample (Fast-dLLM v2's eval harness) decodes a block-diffusion model greedily with "
                            "the threshold rule and the block cache (block, or sub_block for its use_block_cache); got "
                            f"strategy {c.strategy!r}, temperature {c.temperature}, cache {c.cache!r} on a {attention} "
                            "model")
        if c.block_size is not None and (attention != "block_causal" or c.block_size <= 0):
            raise DllmError(f"block_size {c.block_size} applies to block-diffusion models only and must be positive "
                            "(LLaDA / Dream decode blocks of block_length)")
        eos_options = [n for n in ("logits_eos_inf", "confidence_eos_eot_inf") if getattr(c, n)]
        if eos_options and (attention != "bidirectional"
                            or c.strategy not in ("low_confidence", "random", "threshold", "factor")):
            raise DllmError(f"{' and '.join(eos_options)} (LLaDA generate's options) apply to a bidirectional model "
                            "with low_confidence, random, threshold or factor; got strategy "
                            f"{c.strategy!r} on a {attention} model")
        if not c.cfg_scale >= 0 or not math.isfinite(c.cfg_scale):
            raise DllmError(f"cfg_scale {c.cfg_scale} must be a finite number >= 0")
        if c.cfg_scale > 0 and (attention != "bidirectional" or c.cache != "none"
                                or c.strategy not in ("low_confidence", "random", "threshold", "factor")):
            raise DllmError("cfg_scale > 0 (LLaDA's classifier-free guidance) runs without a cache, as LLaDA's "
                            "generate does, on a bidirectional model with low_confidence, random, threshold or factor; "
                            f"got cache {c.cache!r}, strategy {c.strategy!r} on a {attention} model")
        knobs = (c.low_threshold, c.relaxed_threshold, c.credit_alpha, c.credit_gamma, c.credit_decay, c.sched_high,
                 c.sched_low)
        if not all(math.isfinite(v) for v in knobs):
            raise DllmError("low_threshold, relaxed_threshold, credit_* and sched_* must be finite numbers")
        if c.radius < 0 or c.credit_alpha < 0 or c.credit_gamma <= 0 or not 0 <= c.credit_decay <= 1:
            raise DllmError(f"need radius >= 0 (got {c.radius}), credit_alpha >= 0 (got {c.credit_alpha}), "
                            f"credit_gamma > 0 (got {c.credit_gamma}) and 0 <= credit_decay <= 1 (got {c.credit_decay})")
        if c.strategy == "freedave" and (c.cache != "none" or c.temperature > 0 or c.draft_steps < 1
                                         or c.steps // (c.gen_length // c.block_length) > c.block_length):
            raise DllmError("strategy 'freedave' needs cache none, temperature 0, draft_steps >= 1 and at most one "
                            f"step per token (got cache {c.cache}, temperature {c.temperature}, draft_steps "
                            f"{c.draft_steps}, steps {c.steps})")
        if c.sched_shape not in SCHED_SHAPES:
            raise DllmError(f"sched_shape must be one of {', '.join(SCHED_SHAPES)} (got {c.sched_shape!r})")
        if c.sched_low > c.sched_high:
            raise DllmError(f"sched_low ({c.sched_low}) must be <= sched_high ({c.sched_high}): the margin threshold "
                            "falls from a block's first step to its last")
        c.check_cache_refresh(attention)
        return c

    def check_cache_refresh(self, attention: str) -> None:
        """The refresh policy against the model and the cache mode, and its knobs' ranges (DllmError)."""
        c = self
        if c.cache_refresh not in CACHE_REFRESH:
            raise DllmError(f"unknown cache_refresh {c.cache_refresh!r}; use one of {', '.join(CACHE_REFRESH)}")
        if c.dllm_prompt_interval < 1 or c.dllm_response_interval < 1:
            raise DllmError(f"dllm_prompt_interval ({c.dllm_prompt_interval}) and dllm_response_interval "
                            f"({c.dllm_response_interval}) must be >= 1 (steps between refreshes)")
        if not 0.0 <= c.dllm_refresh_ratio <= 1.0:
            raise DllmError(f"dllm_refresh_ratio {c.dllm_refresh_ratio} must be in [0, 1] (the fraction of the "
                            "response recomputed between refreshes)")
        if c.elastic_window < 1 or not c.elastic_gamma >= 0 or not math.isfinite(c.elastic_gamma):
            raise DllmError(f"need elastic_window >= 1 (got {c.elastic_window}) and a finite elastic_gamma >= 0 "
                            f"(got {c.elastic_gamma})")
        if c.cache_refresh == "block":
            return
        if attention != "bidirectional":
            raise DllmError(f"cache_refresh {c.cache_refresh!r} applies to the prefix/dual caches of the bidirectional "
                            "families (LLaDA, Dream); block diffusion caches finished blocks exactly: use "
                            "cache_refresh 'block'")
        if c.cache not in REFRESH_CACHES:
            raise DllmError(f"cache_refresh {c.cache_refresh!r} refreshes a cache: use cache prefix or dual "
                            f"(got cache {c.cache!r})")


def folder_generation_defaults(folder: str | Path) -> dict:
    """The decode settings a folder carries, as GenerationConfig fields: an export's ``dllm_config.json``
    ``generation_defaults``, else a checkpoint's ``generation_config.json`` (Hugging Face's meaning of its
    keys) and ``dllm_generation.json`` (dllm-trt's own keys); see runtime/generation_files.py."""
    from .generation_files import generation_defaults_of

    return generation_defaults_of(folder, field_kinds())


@dataclass
class StepRecord:
    """One forward call of the decode loop."""

    kind: str  # prefill | prefill+block | full | prefix | dual | block | sub_block | commit | (cache_refresh:)
    #            response | prompt | partial (dllm_cache), elastic (elastic)
    query_len: int
    past_len: int
    unmasked: list[int]  # tokens decoded by this forward, per sequence
    live: list[bool]  # sequences still decoding (finished ones ride along in the batch)
    rows: list[int] | None = None  # query rows computed for each sequence (its valid rows of the window)


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # generated tokens per prompt (cut before the first EOS when stop_at_eos)
    nfe: int  # number of forward calls
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def decoded_tokens(self) -> int:
        return sum(sum(s.unmasked) for s in self.steps)

    @property
    def tokens_per_forward(self) -> float:
        """Tokens decoded per forward call, averaged over the sequences (each counts its own forwards)."""
        per_seq = []
        for b in range(len(self.tokens)):
            forwards = sum(s.live[b] for s in self.steps)
            per_seq.append(sum(s.unmasked[b] for s in self.steps) / max(forwards, 1))
        return sum(per_seq) / max(len(per_seq), 1)

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "nfe": self.nfe, "decoded_tokens": self.decoded_tokens,
                "tokens_per_forward": self.tokens_per_forward, "steps": [asdict(s) for s in self.steps]}


def family_generation_defaults(config) -> dict:
    """Each family's upstream default decode settings, as GenerationConfig fields (under what the folder
    and the command line say): Dream's ``diffusion_generate`` ranks by entropy; SDAR's
    ``block_diffusion_generate`` is low_confidence_dynamic at 0.85 with ``denoising_steps`` = its block
    size. LLaDA (low_confidence, one token per step) and Fast-dLLM v2 (threshold 1: one token per step,
    sub-blocks of 8) are GenerationConfig's own defaults."""
    from ..config import QWEN3_MODEL_TYPES

    if config.family == "dream":
        return {"strategy": "entropy"}
    if config.model_type.lower() in QWEN3_MODEL_TYPES:
        return {"strategy": "threshold", "threshold": 0.85, "steps": config.block_size}
    return {}


def _folder_model_config(folder: Path):
    """The ModelConfig of an export or a checkpoint folder, None when it cannot be read (loading the
    backend reports why)."""
    from ..config import ModelConfig
    from ..contract import CONFIG_FILE, config_from_artifact, read_artifact_config

    try:
        if (folder / CONFIG_FILE).is_file():
            return config_from_artifact(read_artifact_config(folder))
        return ModelConfig.from_pretrained(folder)
    except (DllmError, OSError, ValueError, KeyError, TypeError):
        return None


def generation_config_from_args(model_dir: str | Path, args) -> GenerationConfig:
    """Defaults from the folder (dllm_config.json, or generation_config.json + dllm_generation.json), then the command line's
    options (an argparse namespace: every GenerationConfig field that is not None, and ``no_stop``).
    Shared by ``dllm-trt run`` and ``dllm-trt profile``."""
    names = {f.name for f in fields(GenerationConfig)}
    config = _folder_model_config(Path(model_dir))
    values = {**(family_generation_defaults(config) if config is not None else {}),
              **folder_generation_defaults(Path(model_dir))}
    for name in names:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    if getattr(args, "no_stop", False):
        values["stop_at_eos"] = False
    return GenerationConfig(**values)


# ----------------------------------------------------------------------------- settings a person gives
def field_kinds() -> dict[str, tuple[type, bool]]:
    """GenerationConfig field -> (its value type, None allowed): what setting_checks holds values to."""
    import typing

    hints = typing.get_type_hints(GenerationConfig)
    kinds = {}
    for f in fields(GenerationConfig):
        args = typing.get_args(hints[f.name])
        base = next((a for a in args if a is not type(None)), hints[f.name]) if args else hints[f.name]
        kinds[f.name] = (base, type(None) in args)
    return kinds


def check_setting_values(values: dict, name=lambda key: key) -> None:
    """Types and ranges of decode settings a person gave (options, a sweep's values; files are checked where
    they are read, runtime/generation_files.py), naming each as ``name(key)`` spells it."""
    check_values(values, field_kinds(), name)
