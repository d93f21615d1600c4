"""The denoising decode loop, shared by every backend.

Sequences of a batch keep their own positions (no left padding): token ``x[b, i]`` is at
position ``i`` and its keys/values live at cache position ``i``. Each forward takes a query
window per sequence (same length for all), the first ``P`` cache positions as past, and a
bias that says which keys each query may see (runtime/layout.py). That one mechanism gives
every cache mode:

bidirectional families (LLaDA, Dream), semi-autoregressive blocks of ``block_length``:
  none    every step forwards the whole sequence;
  prefix  a full forward refreshes the cache at the start of each block; later steps forward
          the block and everything after it, over the cached prefix (Fast-dLLM prefix cache);
  dual    as prefix, but later steps forward only the block, over the cached prefix *and*
          suffix (Fast-dLLM dual cache). Both are approximations: cached keys are from the
          block's first step.
  ``cache_refresh`` replaces the refresh at each block's first step on these two caches:
  dLLM-Cache's interval schedule with a partial refresh, or Elastic-Cache's window with a
  drift-triggered refresh (runtime/cache_refresh.py); their steps forward explicit query rows
  (any positions, not a contiguous window) and write them all back.
block diffusion (Fast-dLLM v2 / SDAR), blocks of ``bd_size``, block-causal attention:
  none       every step forwards all positions up to the end of the current block;
  block      finished blocks are cached (exact under block-causal attention); steps forward
             the current block (the first one also the prompt's complete blocks: fused prefill);
  sub_block  as block; the first step of each sub-block forwards the whole block and stores
             its keys/values, later steps forward only the sub-block over them.

With ``logits_shift`` (Dream, Fast-dLLM v2) the prediction for position i is read from the
logits at i - 1, so windows start one position early where needed.

The step on the device: every forward names the query rows whose predictions the step reads
(``logits_index``: the block or sub-block being filled, or the one row that predicts a block's
opening token) and gets back, per row, the top-1 token (the mask token excluded) and its
probability, computed where the logits are (dllm_trt/contract.py). The loop then applies the
strategy's rule (threshold, factor, top-k of the schedule) to those B x R numbers; only sampling
at temperature > 0, classifier-free guidance, LLaDA's logits_eos_inf / confidence_eos_eot_inf and
Dream's top_p / top_k ask for the rows' logits (slower: the rows come to the host). The cache is passed whole (P = its capacity), the
bias masking what a step may not see, so no forward slices or copies it.

Randomness (random remasking, sampling) comes from a counter-based stream keyed by the seed,
the sequence's own draw count and the position (sampling.counter_uniform), so a prompt gives the
same tokens alone or in a batch, on every backend.

Profiling: an optional ``timer`` (None by default; dllm_trt.profiling.StepTimer) is told when each
forward and each unmasking starts and ends and when the first block of the batch is finished. It
only reads the clock: with or without it the loop does the same work and gives the same tokens.
"""
from __future__ import annotations

import warnings

from dataclasses import dataclass

import numpy as np

from ..config import ModelConfig
from ..errors import DllmError
from .backends import StepOutput
from .layout import attention_bias
from .cache_refresh import RefreshPolicy
from .sampling import (SAMPLE_STREAM, REMASK_STREAM, confidence_without, counter_uniform, draw, dream_probs,
                       float32_probability, propose)
from .methods import CreditState
from .settings import DREAM_SCHEDULED, SCHEDULED, STEPPED, GenerationConfig, GenerationResult, StepRecord
from .unmask import (dream_count, dream_timesteps, logit_margin, sched_threshold, select_budget, select_drawn,
                     select_factor, select_first, select_hierarchy, select_local_leap, select_threshold, select_top_k,
                     torch_topk, transfer_schedule)

DREAM_ALGS = DREAM_SCHEDULED + ("confidence_threshold",)  # strategies that read Dream's sample_tokens


ROWS_ROUND = 8  # windows of explicit rows (cache_refresh policies) are padded to a multiple of this many rows


@dataclass
class _Window:
    start: np.ndarray  # [B] first position of each sequence's query window
    length: int
    valid: np.ndarray  # [B, length] bool
    past_len: int  # cache positions passed as past: 0, or the whole cache
    past_valid: np.ndarray  # [B, past_len] bool
    pos: np.ndarray | None = None  # [B, length] explicit positions (ascending over the valid rows), else contiguous

    @property
    def positions(self) -> np.ndarray:
        if self.pos is not None:
            return self.pos
        return self.start[:, None] + np.arange(self.length)[None, :]

    @property
    def past_extent(self) -> int:
        """Cache positions visible to some sequence (the step record's past length)."""
        seen = np.flatnonzero(self.past_valid.any(axis=0))
        return int(seen[-1]) + 1 if seen.size else 0


class _Budget:
    """Fast-dLLM's Dream confidence_threshold step budget, per sequence: ``per_step`` tokens a step plus
    the ones the last step dropped (below the threshold); a drop on the last step ends the budget and
    adds a step, so the block is filled by carrying alone."""

    def __init__(self, per_step: int, steps: int, batch: int):
        self.per_step = np.full(batch, per_step)
        self.steps = np.full(batch, steps)
        self.carry = np.zeros(batch, np.int64)

    def quota(self) -> list[int]:
        return (self.per_step + self.carry).tolist()

    def update(self, step: int, asked: np.ndarray, taken: list[int]) -> None:
        dropped = np.asarray(asked) - np.asarray(taken)
        last = (step >= self.steps - 1) & (dropped > 0)
        self.per_step = np.where(last, 0, self.per_step)
        self.steps = np.where(last, self.steps + 1, self.steps)
        self.carry = np.maximum(dropped, 0)


class DecodeLoop:
    """State of one batched generation: the token buffer, the cache, and the step record."""

    def __init__(self, backend, prompts: list[list[int]], gen: GenerationConfig, timer=None):
        self.backend = backend
        self.timer = timer  # hooks: forward_start(kind), forward_end(), unmask_start(), unmask_end(), block_done()
        self.cfg: ModelConfig = backend.config
        self.gen = gen.resolved(self.cfg.attention)
        if not prompts or any(len(p) == 0 for p in prompts):
            raise DllmError("every prompt needs at least one token")
        rows = max(self.cfg.vocab_size, getattr(self.cfg, "embedding_size", 0) or 0)
        for p in prompts:
            ids = np.asarray(p, dtype=np.int64)
            outside = ids[(ids < 0) | (ids >= rows)]
            if outside.size:  # an embedding lookup would fail deep in the backend (IndexError, ORT's Gather)
                bad = int(outside[0])
                raise DllmError(f"prompt token id {bad} is outside the model's {rows} embedding rows (config.json "
                                "vocab_size): the tokenizer.json does not belong to this checkpoint, or the ids are "
                                "wrong; copy the tokenizer files from the checkpoint the model came from")
        prompts = self._upstream_prompts(prompts)
        self.prompt_len = np.array([len(p) for p in prompts])
        self.empty_prompt = bool((self.prompt_len == 0).any())  # _equal_rows_without_context's precondition
        self.batch = len(prompts)
        self.shift = 1 if self.cfg.logits_shift else 0
        self.mask_id = self.cfg.mask_token_id
        self.eos = np.array(self.cfg.eos_token_ids or (-1,))
        # the block of block diffusion: the model's, or the request's (SDAR block_length / v2 block_size)
        self.block_size = (self.gen.block_size or self.cfg.block_size) if self.cfg.attention == "block_causal" else None
        bs = self.block_size or 0
        extra = bs + 1 if self.cfg.attention == "block_causal" else 0
        self.capacity = int(self.prompt_len.max()) + self.gen.gen_length + extra
        longest = int(self.prompt_len.max()) + self.gen.gen_length
        if longest > self.cfg.max_position_embeddings:
            raise DllmError(f"a prompt of {int(self.prompt_len.max())} tokens plus gen_length {self.gen.gen_length} "
                            f"is {longest} positions, more than the model's maximum of "
                            f"{self.cfg.max_position_embeddings}; shorten the prompt or gen_length")
        self.x = np.full((self.batch, self.capacity), self.mask_id, dtype=np.int64)
        for b, p in enumerate(prompts):
            self.x[b, : len(p)] = p
        needs_cache = self.gen.cache != "none"
        self.cache = backend.allocate_cache(self.batch, self.capacity) if needs_cache else None
        # The whole cache is every cached forward's past: fixed shapes, nothing sliced or copied.
        self.past_len = int(self.cache.capacity) if self.cache is not None else 0
        self.steps: list[StepRecord] = []
        self._bias_key: tuple | None = None  # the last window's bias (bias_of)
        self._bias: np.ndarray | None = None
        self.live = np.ones(self.batch, bool)  # not yet finished
        self.draws = np.zeros(self.batch, np.int64)  # random draws per sequence (counter of the stream)
        g = self.gen
        # LLaDA generate's options: EOS never proposed (banned); EOS / EOT proposals rank last (unconfident)
        self.banned = (self._eos_id("logits_eos_inf"),) if g.logits_eos_inf else ()
        self.unconfident = (self._eos_id("confidence_eos_eot_inf"), self._eot_id()) if g.confidence_eos_eot_inf else ()
        # Dream's statistics are read from its top-p / top-k filtered distribution (at temperature 0 too)
        self.dream_filtered = g.strategy in DREAM_ALGS and (g.top_p < 1.0 or g.top_k > 0)
        # the rules whose exact ties are systematic follow torch.topk's order (choose_torch_order)
        # LLaDA generate's options that read the logits on the host (guidance, the EOS / EOT options) rank by its
        # float32 softmax at temperature 0: guidance amplifies the logits ((cfg_scale + 1) x the difference), so
        # that softmax saturates at exactly 1 for many positions, and upstream's torch.topk orders those ties
        self.torch_softmax = (g.temperature == 0.0 and g.strategy == "low_confidence" and self.cfg.family == "llada"
                              and (g.cfg_scale > 0.0 or bool(self.unconfident)))
        self.upstream_ties = ((bool(self.unconfident) and g.strategy == "low_confidence") or self.torch_softmax
                              or (self.dream_filtered and g.alg_temp == 0.0))
        self.block_start = self.prompt_len.copy()  # run_masked: the current block's first position per sequence
        # Sampling, and Dream's top-p / top-k distribution (at temperature 0 too), run on the device when the backend
        # has the export's sampler graphs: the logits never leave it. Otherwise they read the rows' logits, as do
        # guidance, LLaDA's EOS options and the cache-refresh policies (whose step may merge two forwards).
        # LLaDA's generate (and Fast-dLLM's LLaDA code) ranks a sampled token by softmax(logits)[token]: the
        # probability before temperature (its Gumbel-max draw is at the temperature, the confidence is not)
        self.untempered = self.cfg.family == "llada" and g.temperature > 0.0
        plain = g.cfg_scale == 0.0 and not self.banned and not self.unconfident and g.cache_refresh == "block"
        self.dream_sampling = plain and self.dream_filtered and bool(getattr(backend, "samples_dream_on_device", False))
        self.device_sampling = self.dream_sampling or (
            plain and g.temperature > 0.0 and not self.dream_filtered and bool(getattr(backend, "samples_on_device", False))
            and (not self.untempered or bool(getattr(backend, "samples_untempered", False))))
        self.want_logits = not self.device_sampling and (
            g.temperature > 0.0 or g.cfg_scale > 0.0 or bool(self.banned) or bool(self.unconfident) or self.dream_filtered)
        # SDAR's static/dynamic remasking: torch.topk over the whole span (see unmask_span_topk)
        self.span_topk = self.cfg.model_type == "sdar" and self.gen.strategy in ("low_confidence", "threshold")
        self.credit = CreditState(self.batch, g.credit_alpha, g.credit_gamma, g.credit_decay) \
            if g.strategy == "credit" else None
        self.progress = 0.0  # sched: the block's step / its steps (set by run_masked before each unmasking)
        # prefix/dual caches refreshed by dLLM-Cache's schedule or Elastic-Cache's drift test (cache_refresh.py)
        self.refresh = RefreshPolicy(self) if g.cache_refresh != "block" else None
        self.round_rows = getattr(backend, "io_binding", False) is True or hasattr(backend, "engine_record")

    def _upstream_prompts(self, prompts: list[list[int]]) -> list[list[int]]:
        """Fast-dLLM v2 (block diffusion with shifted logits) prefills only a prompt longer than one block, and its
        first block forward then sees the new block alone: a prompt of exactly block_size tokens is neither cached
        nor attended, and the generation is the one of no prompt at all (the new block at positions 0..). The
        authors' tokens are the reference (docs/upstream_semantics.md row 5), so such a prompt decodes as empty
        unless ``read_one_block_prompt`` is set (the bundled bd-tiny's settings set it: it was trained reading them)."""
        if (self.cfg.attention != "block_causal" or not self.cfg.logits_shift or self.gen.read_one_block_prompt
                or self.gen.batch_sample):  # the harness decides for itself (runtime/batch_sample.py)
            return prompts
        bs = self.gen.block_size or self.cfg.block_size
        if not any(len(p) == bs for p in prompts):
            return prompts
        warnings.warn(f"a prompt of exactly block_size = {bs} tokens is not read: Fast-dLLM v2's generate prefills "
                      "only prompts longer than one block and decodes the first block without it, and dllm-trt gives "
                      "its tokens; add or remove a token, or set read_one_block_prompt (--read-one-block-prompt), to "
                      "have the prompt read", stacklevel=4)
        return [[] if len(p) == bs else p for p in prompts]

    def _eos_id(self, option: str) -> int:
        """config.json's eos_token_id (the first of a list): LLaDA generate's hard-coded 126081 on LLaDA-8B."""
        if not self.cfg.eos_token_ids:
            raise DllmError(f"{option} needs the model's EOS id, and its config.json has eos_token_id null")
        return int(self.cfg.eos_token_ids[0])

    def _eot_id(self) -> int:
        """The tokenizer's <|eot_id|> (ModelConfig.eot_token_id): LLaDA generate's hard-coded 126348 on LLaDA-8B."""
        if self.cfg.eot_token_id is None:
            raise DllmError("confidence_eos_eot_inf needs the end-of-turn token <|eot_id|>, which this model's tokenizer "
                            "files do not have (tokenizer_config.json / tokenizer.json added tokens)")
        return int(self.cfg.eot_token_id)

    # ------------------------------------------------------------------ one forward
    def forward(self, w: _Window, kind: str, write: bool, rows: np.ndarray) -> StepOutput:
        """Top-1 tokens and confidences of query rows ``rows`` [B, R] of the window (and their
        logits when sampling); with ``write`` the window's valid keys/values go into the cache."""
        pos = w.positions
        safe_pos = np.where(w.valid, pos, 0)
        input_ids = np.take_along_axis(self.x, np.clip(pos, 0, self.capacity - 1), axis=1)
        input_ids = np.where(w.valid, input_ids, self.mask_id)
        bias = self.bias_of(w, safe_pos)
        rows = np.clip(rows, 0, w.length - 1).astype(np.int64)
        if self.timer is not None:
            self.timer.forward_start(kind)
        if self.gen.cfg_scale > 0:
            out = self.guided_forward(input_ids, safe_pos, bias, rows)
        else:
            out = self.backend.forward(input_ids, safe_pos, bias, self.cache, w.past_len, w.valid if write else None,
                                       rows, self.want_logits)
        if self.timer is not None:
            self.timer.forward_end()
        out = self._equal_rows_without_context(out, input_ids, w)
        if write and self.refresh is not None:
            self.refresh.written(pos, w.valid, input_ids)
        live = self.live & w.valid.any(axis=1)  # a sequence with no valid row only rides along
        self.steps.append(StepRecord(kind, w.length, w.past_extent, [0] * self.batch, live.tolist(),
                                     w.valid.sum(axis=1).tolist()))
        return out

    def _equal_rows_without_context(self, out: StepOutput, input_ids: np.ndarray, w: _Window) -> StepOutput:
        """A sequence whose window holds only mask tokens and sees no cache (Fast-dLLM v2's first block after a
        prompt it does not read) has rows that are equal in exact arithmetic: every position embeds the same
        token, no position is added to the hidden states (RoPE only turns q and k), and attention over identical
        values returns that value, layer after layer. Upstream's float32 rows tie to the last bit there, and its
        threshold rule takes the first position; this model's rows differed in the last bits and another
        position won. Such rows are made equal (row 0's statistics), so the tie goes to the first position.
        Greedy only: sampled rows are independent draws. Only a prompt decoded as empty can give such a window
        (any other sequence has its prompt in the window or the cache), so other requests skip the check."""
        if not self.empty_prompt or self.gen.cfg_scale > 0 or self.gen.temperature > 0:
            return out
        blank = (~w.past_valid.any(axis=1)) & np.all((input_ids == self.mask_id) | ~w.valid, axis=1)
        if not blank.any():
            return out
        fields = {}
        for name in ("tokens", "confidence", "logits", "margin", "neg_entropy", "logit_gap", "raw_confidence"):
            a = getattr(out, name)
            if a is not None:
                a = a.copy()
                a[blank] = a[blank][:, :1]
                fields[name] = a
        return out._replace(**fields)

    def guided_forward(self, input_ids: np.ndarray, pos: np.ndarray, bias: np.ndarray, rows: np.ndarray) -> StepOutput:
        """LLaDA's unsupervised classifier-free guidance (its ``generate``, ``cfg_scale > 0``): the sequence
        and a copy with the prompt masked go through one forward as a batch of 2B (one model call per step,
        as upstream), and the step ranks and picks from ``un + (cfg_scale + 1) * (cond - un)`` of the read
        rows' logits (so the logits come to the host: guidance is a reference feature, not the fast path)."""
        b = self.batch
        prompt = pos < self.prompt_len[:, None]
        uncond = np.where(prompt, self.mask_id, input_ids)
        both = self.backend.forward(np.concatenate([input_ids, uncond]), np.concatenate([pos, pos]),
                                    np.concatenate([bias, bias]), None, 0, None, np.concatenate([rows, rows]), True)
        cond, un = both.logits[:b].astype(np.float32), both.logits[b:].astype(np.float32)
        logits = un + np.float32(self.gen.cfg_scale + 1.0) * (cond - un)
        return StepOutput(logits.argmax(axis=-1), None, logits)

    def bias_of(self, w: _Window, safe_pos: np.ndarray) -> np.ndarray:
        """The window's attention bias, built once while consecutive steps keep the same window (every
        step of a block in the dual, prefix and sub-block modes, and of a request without a cache): the
        same array object is returned, so a backend can skip re-uploading it by identity."""
        key = (w.start.tobytes(), w.length, w.valid.tobytes(), w.past_len, w.past_valid.tobytes(),
               None if w.pos is None else w.pos.tobytes())
        if self._bias_key != key:
            self._bias_key = key
            self._bias = attention_bias(safe_pos, w.valid, w.past_valid, self.block_size)
        return self._bias

    def window(self, start: np.ndarray, length: int, valid_end: np.ndarray, past_visible: np.ndarray | None = None,
               active: np.ndarray | None = None, valid_start: np.ndarray | None = None) -> _Window:
        """Rows at positions start_b .. start_b + length - 1; rows in [valid_start_b, valid_end_b) are real.
        ``past_visible`` [B, C] marks the cache positions the rows may attend (None: no past)."""
        pos = start[:, None] + np.arange(length)[None, :]
        valid = pos < valid_end[:, None]
        if valid_start is not None:
            valid &= pos >= valid_start[:, None]
        if active is not None:
            valid &= active[:, None]
        if past_visible is None:
            return _Window(start.astype(np.int64), length, valid, 0, np.zeros((self.batch, 0), bool))
        return _Window(start.astype(np.int64), length, valid, self.past_len, past_visible)

    def cache_positions(self) -> np.ndarray:
        return np.arange(self.past_len)[None, :]

    def past_below(self, end: np.ndarray) -> np.ndarray:
        """Cache positions [0, end_b) are visible."""
        return self.cache_positions() < end[:, None]

    def rows_window(self, rows: list[np.ndarray], past_visible: np.ndarray) -> _Window:
        """Query rows at the given positions of each sequence (ascending; an empty array: the sequence rides
        along with no valid row) over the whole cache as past, ``past_visible`` [B, C] masking it. On the device
        paths (ONNX Runtime's bound path, TensorRT) the window is padded to a multiple of ROWS_ROUND rows (invalid
        ones) so that they see few shapes."""
        n = max(1, max(len(r) for r in rows))
        if self.round_rows:  # fewer shapes: each is a bucket of buffers / a CUDA graph on the device paths
            n = max(n, min(-(-n // ROWS_ROUND) * ROWS_ROUND, self.capacity))
        pos = np.zeros((self.batch, n), np.int64)
        valid = np.zeros((self.batch, n), bool)
        for b, r in enumerate(rows):
            pos[b, : len(r)] = r
            valid[b, : len(r)] = True
        return _Window(pos[:, 0].copy(), n, valid, self.past_len, past_visible, pos)

    def fill_rows(self, w: _Window, lo: np.ndarray, span: int) -> np.ndarray:
        """Query rows predicting positions lo_b .. lo_b + span - 1 (shifted families read one row earlier; with no
        prompt, position 0 reads row 0 too, as Fast-dLLM v2's shifted logits give its first row to both).
        In a window of explicit positions a position that is not a query row reads row 0 (never used)."""
        want = np.maximum(lo[:, None] + np.arange(span)[None, :] - self.shift, 0)
        if w.pos is None:
            return want - w.start[:, None]
        out = np.zeros_like(want)
        for b in range(self.batch):
            have = w.pos[b, w.valid[b]]
            if have.size:
                i = np.minimum(np.searchsorted(have, want[b]), have.size - 1)
                out[b] = np.where(have[i] == want[b], i, 0)
        return out

    # ------------------------------------------------------------------ choosing tokens
    def _checked(self, conf: np.ndarray, b: int) -> np.ndarray:
        if not np.isfinite(conf).all():
            raise DllmError(f"the model produced NaN/Inf logits at forward {len(self.steps)} (sequence {b}); "
                            "the weights or the graph are broken (check the export's validation, or re-export)")
        return conf

    def _propose(self, out: StepOutput, b: int, j: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and confidences of rows j of sequence b: the device's top-1, or a sample of the logits."""
        g = self.gen
        if not self.want_logits:
            conf = out.raw_confidence if self.untempered and self.device_sampling else out.confidence
            return out.tokens[b, j], self._checked(conf[b, j].astype(np.float64), b)
        rows = self._rows(out, b, j)
        u = counter_uniform(g.seed, SAMPLE_STREAM, int(self.draws[b]), positions)
        if self.dream_filtered:  # Dream's sample_tokens: token and top-1 probability of the filtered distribution
            p = dream_probs(rows, g.temperature, g.top_p, g.top_k)
            tokens = p.argmax(axis=-1) if g.temperature == 0.0 else draw(p, u)
            return tokens, p[np.arange(p.shape[0]), tokens]
        tokens, conf = propose(rows, g.temperature, g.top_k, g.top_p, u)
        if self.torch_softmax:  # LLaDA generate at temperature 0: its float32 softmax (EOS / EOT left out with the option)
            conf = float32_probability(rows, tokens, self.unconfident)
        elif self.untempered or self.unconfident:  # LLaDA: softmax(logits)[token], EOS / EOT left out with the option
            conf = confidence_without(rows, tokens, 0.0 if self.untempered else g.temperature, self.unconfident)
        return tokens, conf

    def _rows(self, out: StepOutput, b: int, j: np.ndarray) -> np.ndarray:
        """Logits rows j of sequence b (float32), checked, with the mask token (and with logits_eos_inf, EOS) at
        -inf: never proposed (see models.layers.select_top1)."""
        rows = out.logits[b, j]
        self._checked(rows.max(axis=-1), b)
        rows = rows.astype(np.float32, copy=True)
        if 0 <= self.mask_id < rows.shape[-1]:
            rows[:, self.mask_id] = -np.inf
        for t in self.banned:
            rows[:, t] = -np.inf
        return rows

    def choose(self, conf: np.ndarray, count: int | None, u: np.ndarray | None,
               positions: np.ndarray | None = None) -> np.ndarray:
        """Indices of the candidates (in position order) the strategy fills this step; ``count`` is the
        schedule's count for the step (None: the rule alone decides, at least one token); ``u`` one
        uniform per candidate (Dream's alg_temp draws; None where the strategy draws nothing);
        ``positions`` the candidates' positions (the rules that look at neighbours)."""
        g = self.gen
        if g.strategy in ("hierarchy", "local_leap"):
            pos = np.arange(conf.size) if positions is None else positions
            if g.strategy == "hierarchy":
                return select_hierarchy(conf, pos, g.threshold, g.low_threshold)
            return select_local_leap(conf, pos, g.threshold, g.relaxed_threshold, g.radius)
        if g.strategy == "credit":  # dInfer's threshold rule on the fused probabilities: >=, the top one always
            return select_threshold(conf, g.threshold, True)
        if g.strategy == "confidence_threshold":
            return select_budget(conf, count or conf.size, g.threshold)
        if g.strategy in DREAM_SCHEDULED and g.alg_temp > 0:
            return select_drawn(conf, count or 0, g.alg_temp, u)
        if g.strategy == "threshold":  # Fast-dLLM LLaDA/Dream compare >=, Fast-dLLM v2 and SDAR >
            return select_threshold(conf, g.threshold, self.cfg.family in ("llada", "dream"), count or 1)
        if g.strategy == "factor":
            return select_factor(conf, g.factor)
        if g.strategy == "sequential":
            return select_first(conf, count or 1)
        return select_top_k(conf, count or 1)

    def _statistic(self, out: StepOutput, b: int, j: np.ndarray) -> np.ndarray:
        """Dream's ranking statistic of rows j of sequence b: top-1 minus top-2 probability (topk_margin)
        or sum p log p (entropy; every alg of the block variant), from the device's outputs, or from the rows'
        logits (sampling, top_p / top_k): the tempered, filtered distribution of Dream's sample_tokens."""
        g = self.gen
        # Fast-dLLM's Dream block variant (prefix / dual cache) ranks by negative entropy whatever the alg
        margin = g.strategy == "topk_margin" and g.cache == "none"
        if self.want_logits:
            p = dream_probs(self._rows(out, b, j), g.temperature, g.top_p, g.top_k)
            if margin:
                top2 = np.sort(p, axis=-1)[:, -2:]
                return top2[:, 1] - top2[:, 0]
            return (p * np.log(p + 1e-10)).sum(axis=-1)
        stat = out.margin if margin else out.neg_entropy
        if stat is None:
            raise DllmError(f"strategy {self.gen.strategy!r} needs the graph's margin/neg_entropy outputs, which this "
                            "backend does not return; re-export the model with this dllm-trt (`dllm-trt export`)")
        return self._checked(stat[b, j].astype(np.float64), b)

    def _sched_exits(self, out: StepOutput, b: int, j: np.ndarray) -> bool:
        """SchED's test: the mean top-1/top-2 logit margin of the block's masked rows j reaches the threshold of
        the block's progress. From the rows' logits when sampling, else from the graph's top-1 probability and
        probability margin (logit_margin: the same number)."""
        g = self.gen
        if self.want_logits:
            rows = out.logits[b, j].astype(np.float64)
            if 0 <= self.mask_id < rows.shape[-1]:
                rows[:, self.mask_id] = -np.inf
            top2 = np.sort(rows, axis=-1)[:, -2:]
            gap = top2[:, 1] - top2[:, 0]
        elif out.logit_gap is not None:  # sampled on the device: the sampler's exact logit gap
            gap = out.logit_gap[b, j]
        else:
            if out.margin is None:
                raise DllmError("strategy 'sched' needs the graph's margin output, which this backend does not "
                                "return; re-export the model with this dllm-trt (`dllm-trt export`)")
            gap = logit_margin(out.confidence[b, j], out.margin[b, j])
        return float(np.mean(gap)) >= sched_threshold(self.progress, g.sched_high, g.sched_low, g.sched_shape)

    def unmask(self, out: StepOutput, w: _Window, lo: np.ndarray, hi: np.ndarray, active: np.ndarray,
               quota: list[int] | None = None) -> None:
        """Fill masked positions of [lo_b, hi_b) from this forward's rows (read with ``fill_rows``)."""
        if self.timer is not None:
            self.timer.unmask_start()
        rec = self.steps[-1]
        rec.live = [bool(a) and l for a, l in zip(active, rec.live)]  # waiting sequences do not count
        self.taken = [0] * self.batch  # tokens this unmasking fills, per sequence
        g = self.gen
        if self.device_sampling:
            out = self.sample_on_device(out, lo)
        for b in np.flatnonzero(active):
            j = np.flatnonzero(self.x[b, lo[b]: hi[b]] == self.mask_id)
            if j.size == 0:
                continue
            if self.span_topk and quota is not None:
                self.unmask_span_topk(out, b, int(lo[b]), int(hi[b]), quota[b])
                continue
            cand = j + lo[b]
            if w.pos is None:
                assert (np.maximum(cand - self.shift, 0) - w.start[b]).min() >= 0, "query window does not cover the shifted prediction rows"
            else:
                have = w.pos[b, w.valid[b]]  # (none: the sequence decodes from a refresh forward of the step)
                assert have.size == 0 or np.isin(cand - self.shift, have).all(), \
                    "the query rows do not hold the rows predicting the candidates"
            tokens, conf = self._propose(out, b, j, cand)
            if g.strategy in ("topk_margin", "entropy") or (g.strategy in DREAM_SCHEDULED and g.cache != "none"):
                conf = self._statistic(out, b, j)
            # the remasking stream: only random remasking and Dream's alg_temp draw from it
            drawn = g.strategy == "random" or (g.strategy in DREAM_SCHEDULED and g.alg_temp > 0)
            u = counter_uniform(g.seed, REMASK_STREAM, int(self.draws[b]), cand) if drawn else None
            if g.strategy == "random":
                conf = u
            elif g.strategy == "credit":
                conf = self.credit.fuse(b, (int(lo[b]), int(hi[b])), cand, tokens, conf)
            self.draws[b] += 1
            if g.strategy == "sched" and self._sched_exits(out, b, j):
                chosen = np.arange(j.size)  # SchED's early exit: the block's remaining masks, all at once
            elif self.upstream_ties and quota is not None:
                chosen = self.choose_torch_order(b, cand, conf, quota[b])
            else:
                chosen = self.choose(conf, quota[b] if quota is not None else None, u, j)
            self.x[b, cand[chosen]] = tokens[chosen]
            # counted on the step's forward the sequence took part in (a cache_refresh step may run two)
            own = rec if rec.live[b] or len(self.steps) < 2 or not self.steps[-2].live[b] else self.steps[-2]
            own.unmasked[b] += int(chosen.size)
            self.taken[b] = int(chosen.size)
        if self.timer is not None:
            self.timer.unmask_end()

    def sample_on_device(self, out: StepOutput, lo: np.ndarray) -> StepOutput:
        """Every read row sampled where the forward left its logits (the backend's sampler graph): row r of
        sequence b predicts position lo_b + r and draws the uniform the host path would draw for it (same
        stream, same counter: no sequence has drawn yet in this unmasking), so the tokens are the host's."""
        g = self.gen
        r = out.tokens.shape[1]
        u = np.stack([counter_uniform(g.seed, SAMPLE_STREAM, int(self.draws[b]), lo[b] + np.arange(r))
                      for b in range(self.batch)])
        if self.dream_sampling:
            return self.backend.sample(g.temperature, g.top_k, g.top_p, u, dream=True)
        return self.backend.sample(g.temperature, g.top_k, g.top_p, u)

    def choose_torch_order(self, b: int, cand: np.ndarray, conf: np.ndarray, k: int) -> np.ndarray:
        """The top-k rules where equal confidences are common by construction, ordered as upstream's
        ``torch.topk`` orders them. LLaDA's confidence_eos_eot_inf gives every EOS / EOT proposal confidence 0;
        Dream's top_p leaves a one-token nucleus wherever the top token's probability reaches top_p, so those
        positions all have top-1 probability 1, margin 1, entropy 0. Which tied positions a step takes decides
        the tokens, and torch's CPU top-k takes them in an order of its own that depends on the row it ranks;
        unmask.torch_topk replays it on upstream's row (``torch_row``). Without a tie among the k + 1 best the
        order of the stable rule is used (the same set). Returns indices into ``cand`` (position order);
        ``confidence_threshold`` keeps the first of the order and those at or above the threshold."""
        k = max(1, min(k, cand.size))
        order = np.argsort(-conf, kind="stable")
        head = conf[order[: k + 1]]
        if np.unique(head).size < head.size:
            length, offset = self.torch_row(b)
            row = np.full(length, -np.inf)
            row[cand + offset] = conf
            order = np.searchsorted(cand, torch_topk(row, k) - offset)
        top = order[:k]
        if self.gen.strategy == "confidence_threshold":
            keep = conf[top] >= self.gen.threshold
            keep[0] = True
            top = top[keep]
        return np.sort(top)

    def torch_row(self, b: int) -> tuple[int, int]:
        """The row upstream's ``torch.topk`` ranks for sequence b, as (length, offset of position 0): the whole
        left-padded buffer (the batch's longest prompt + gen_length; LLaDA's generate, Dream's diffusion_generate),
        or, in Fast-dLLM's Dream block variant, the buffer from the block's start (prefix cache) or the block
        alone (dual cache). A batch of prompts of different lengths therefore breaks exact ties as upstream's
        padded batch does, which may differ from the prompt alone."""
        g = self.gen
        s = int(self.block_start[b])
        if g.strategy in DREAM_ALGS and g.cache == "prefix":
            return int(self.prompt_len[b]) + g.gen_length - s, -s
        if g.strategy in DREAM_ALGS and g.cache == "dual":
            return g.block_length, -s
        width = int(self.prompt_len.max())
        return width + g.gen_length, width - int(self.prompt_len[b])

    def unmask_span_topk(self, out: StepOutput, b: int, lo: int, hi: int, k: int) -> None:
        """SDAR's low_confidence_static / _dynamic as its generate.py runs them: ``torch.topk`` of the span's
        confidences with -inf at positions that are not masks, k = the step's count of the span's length
        (not of its masks). In the prompt's partial block k can exceed the masks left: torch then also
        returns -inf ties, and SDAR writes its new predictions there too, over prompt or decoded tokens.
        dllm-trt does the same, with the ties in the order of torch's CPU top-k (unmask.torch_topk), so a
        checkpoint gives the tokens SDAR's code gives on a CPU. Dynamic: every mask above the threshold
        when there are at least k of them, else the same top-k."""
        rows = np.arange(hi - lo)
        masked = self.x[b, lo:hi] == self.mask_id
        tokens, conf = self._propose(out, b, rows, rows + lo)
        conf = np.where(masked, conf, -np.inf)
        self.draws[b] += 1
        above = conf > self.gen.threshold
        if self.gen.strategy == "threshold" and int(above.sum()) >= k:
            chosen = np.flatnonzero(above)
        else:
            chosen = torch_topk(conf, k)
        self.x[b, lo + chosen] = tokens[chosen]
        self.steps[-1].unmasked[b] += int(masked[chosen].sum())

    def sub_block_window(self, s: np.ndarray, e: np.ndarray, a: np.ndarray, z: np.ndarray, active: np.ndarray,
                         pending: np.ndarray) -> tuple[_Window, str, bool]:
        """A later step of sub-block [a, z) of block [s, e), Fast-dLLM v2's block cache. A row whose sub-block
        opens with a mask re-forwards (and re-caches) the whole block (upstream's refresh rule); the others
        forward the sub-block alone over the block's cache as last forwarded, their own keys fresh. Their
        first position is decoded, so its predicting row (a lead row) is never read. Rows decide alone, so
        a prompt gives the same tokens alone or in a batch (upstream's batch_sample refreshes all rows when
        any needs it)."""
        idx = self.cache_positions()
        sub_past = (idx < e[:, None]) & ~((idx >= a[:, None]) & (idx < z[:, None]))
        refresh = pending & (self.x[np.arange(self.batch), np.minimum(a, self.capacity - 1)] == self.mask_id)
        if not refresh.any():
            return self.window(a, z[0] - a[0], z, sub_past, active), "sub_block", False
        past = np.where(refresh[:, None], idx < s[:, None], sub_past)
        w = self.window(s, int((e - s).max()), e, past, active, valid_start=np.where(refresh, s, a))
        return w, "block", True  # refreshed rows store the block; the others their sub-block, in place as upstream

    def stopped(self, rows: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Rows whose generation [prompt, end) holds a stop token with no mask before it (Fast-dLLM v2
        stops there, before the next forward): the tokens up to the stop are final."""
        out = np.zeros(self.batch, bool)
        for b in np.flatnonzero(rows):
            gen = self.x[b, self.prompt_len[b]: end[b]]
            hit = np.flatnonzero(np.isin(gen, self.eos))
            out[b] = hit.size > 0 and not (gen[: hit[0]] == self.mask_id).any()
        return out

    def has_eos(self, b: int, end: int) -> bool:
        return bool(np.isin(self.x[b, self.prompt_len[b]: end], self.eos).any())

    def result(self) -> GenerationResult:
        out, eos = [], set(self.eos.tolist())
        for b in range(self.batch):
            toks = self.x[b, self.prompt_len[b]: self.prompt_len[b] + self.gen.gen_length].tolist()
            if self.gen.stop_at_eos:
                cut = next((i for i, t in enumerate(toks) if t in eos), len(toks))
                toks = toks[:cut]
            out.append(toks)
        return GenerationResult(out, len(self.steps), self.steps)

    # ------------------------------------------------------------------ bidirectional families
    def run_masked(self) -> GenerationResult:
        g, B = self.gen, self.batch
        total = self.prompt_len + g.gen_length
        full_len = int(total.max())
        zeros = np.zeros(B, np.int64)
        blocks = g.gen_length // g.block_length
        scheduled = g.strategy in SCHEDULED
        steps_per_block = g.steps // blocks if g.strategy in STEPPED else None
        timesteps = dream_timesteps(steps_per_block, g.eps) if g.strategy in DREAM_SCHEDULED else None
        # Fast-dLLM's Dream block variant (prefix / dual cache): the block's first forward fills only its
        # opening position, so later windows need no lead row for the shift.
        dream_block = g.strategy in DREAM_ALGS and g.cache != "none" and g.cache_refresh == "block"
        lead = 0 if dream_block else self.shift
        # Fast-dLLM's generate_with_dual_cache runs at most steps // blocks forwards per block, whatever the rule:
        # with threshold / factor a block can keep masks, which the next block's first (full) step may fill (its
        # candidates are every mask before the block's end) and which the last block leaves in the output.
        cap = g.steps // blocks if (g.cache == "dual" and g.strategy in ("threshold", "factor")
                                    and g.cache_refresh == "block") else None
        # Fast-dLLM's Dream block variant runs steps_per_block forwards per block, the first a full one that fills
        # only the block's opening position (`if i == steps_per_block: break`): with one step per block the
        # block's other positions stay masks, in the output too, as the authors' code returns them
        dream_stop = steps_per_block if dream_block and timesteps is not None else None
        if dream_stop == 1:
            warnings.warn("Dream's block variant (prefix / dual cache) with one step per block fills only each "
                          "block's first position and leaves its other positions masked, as Fast-dLLM's code does; "
                          "use steps >= 2 x the number of blocks to fill every block", stacklevel=3)
        finished = np.zeros(B, bool)
        self.live = ~finished
        for k in range(blocks):
            active = ~finished
            if not active.any():
                break
            s = self.prompt_len + k * g.block_length
            e = s + g.block_length
            schedule = transfer_schedule(g.block_length, steps_per_block) if scheduled else None
            budget = _Budget(g.block_length // steps_per_block, steps_per_block, B) \
                if g.strategy == "confidence_threshold" and not dream_block else None
            step = forwards = 0
            while True:
                masked = np.array([int((self.x[b, s[b]:e[b]] == self.mask_id).sum()) for b in range(B)])
                pending = active & (masked > 0)
                if not pending.any() or (cap is not None and forwards >= cap) or (
                        dream_stop is not None and step >= dream_stop):
                    break
                fill_end, lo = e, s
                if cap is not None and forwards == 0 and any(
                        (self.x[b, self.prompt_len[b]: s[b]] == self.mask_id).any() for b in np.flatnonzero(active)):
                    lo = self.prompt_len  # masks left by earlier blocks are candidates of this full step too
                if dream_block and forwards == 0:
                    quota, fill_end = [1] * B, s + 1  # upstream: x[s] = argmax, whatever the algorithm
                elif dream_block and budget is None and timesteps is None:
                    quota = masked.tolist()  # confidence_threshold: all >= threshold, the most confident always
                elif scheduled:  # the schedule fills the block in exactly steps_per_block steps
                    quota = [schedule[min(step, steps_per_block - 1)]] * B  # (more steps: an Elastic window too small)
                elif timesteps is not None:
                    quota = [dream_count(n, step, steps_per_block, timesteps) for n in masked]
                    if not any(quota[b] for b in np.flatnonzero(pending)):
                        step += 1  # Dream fills nothing this step: the forward would change nothing
                        continue
                else:
                    quota = budget.quota() if budget is not None else None
                if self.refresh is not None:  # dLLM-Cache / Elastic-Cache choose the rows and refreshes
                    w, out, fill_end = self.refresh.step(s, e, total, lead, pending)
                elif g.cache == "none" or forwards == 0:
                    w = self.window(zeros, full_len, total)
                    out = self.forward(w, "full", g.cache != "none", self.fill_rows(w, lo, int((e - lo).max())))
                elif g.cache == "prefix":
                    start = s - lead
                    w = self.window(start, int((total - start).max()), total, self.past_below(start))
                    out = self.forward(w, "prefix", False, self.fill_rows(w, s, g.block_length))
                else:  # dual
                    start = s - lead
                    idx = self.cache_positions()
                    past_visible = (idx < total[:, None]) & ~((idx >= start[:, None]) & (idx < e[:, None]))
                    w = self.window(start, g.block_length + lead, e, past_visible)
                    out = self.forward(w, "dual", False, self.fill_rows(w, s, g.block_length))
                self.progress = min(step / steps_per_block, 1.0) if steps_per_block else 0.0
                self.block_start = s
                self.unmask(out, w, lo, fill_end, pending | (active & (lo < s)), quota)
                if budget is not None:
                    budget.update(step, np.minimum(quota, masked), self.taken)
                step += 1
                forwards += 1
            if self.timer is not None:
                self.timer.block_done()
            if g.stop_at_eos:
                for b in np.flatnonzero(active):
                    finished[b] = self.has_eos(b, e[b])
                self.live = ~finished
        return self.result()

    # ------------------------------------------------------------------ block diffusion
    def span_schedule(self, bs: int, sb: int) -> list[int] | None:
        """SDAR's per-step counts for one sub-block: ``steps`` per block split over its sub-blocks, each
        spreading its length evenly (get_num_transfer_tokens: counts of the span's length, not of its masks).
        None without ``steps``, or for the factor rule: one token per step at least."""
        g = self.gen
        if g.steps is None or g.strategy == "factor":
            return None
        spans = bs // sb
        if g.steps % spans:
            raise DllmError(f"steps {g.steps} (per block) must be a multiple of the {spans} sub-blocks of a block "
                            f"(block size {bs} / sub_block_length {sb})")
        return transfer_schedule(sb, min(g.steps // spans, sb))

    def run_blocks(self) -> GenerationResult:
        g, B, bs = self.gen, self.batch, self.block_size
        sb = g.sub_block_length  # Fast-dLLM v2 fills a block sub-block by sub-block in every cache mode
        if sb <= 0 or bs % sb:
            raise DllmError(f"sub_block_length {g.sub_block_length} must divide the model's block size {bs}")
        n = self.prompt_len.copy()  # decoded length per sequence
        committed = (n // bs) * bs  # positions whose keys/values are final
        zeros = np.zeros(B, np.int64)
        done = np.zeros(B, bool)
        self.live = ~done
        one_row = np.zeros((B, 1), np.int64)  # a forward that only fills the cache reads one row
        schedule = self.span_schedule(bs, sb)

        def last_rows(w: _Window) -> np.ndarray:
            return (n - 1 - w.start)[:, None]

        def take_next_token(out: StepOutput, who: np.ndarray) -> None:
            """The AR token that opens the next block, from the last position of a finished block (row 0)."""
            if self.timer is not None:
                self.timer.unmask_start()
            rec = self.steps[-1]
            if self.device_sampling:
                out = self.sample_on_device(out, n)  # row 0 predicts position n_b
            for b in np.flatnonzero(who):
                tok, _ = self._propose(out, b, np.zeros(1, np.int64), n[b: b + 1])
                self.x[b, n[b]] = tok[0]
                n[b] += 1
                rec.unmasked[b] += 1
            if self.timer is not None:
                self.timer.unmask_end()

        # The prompt's complete blocks need their keys/values cached (exact: block-causal).
        # Where a prompt ends on a block boundary, a shifted model must first read the token
        # that opens the next block, so prefill them on their own; otherwise the first block
        # forward covers them too (fused prefill: one forward fewer per request).
        on_boundary = (committed == n) & (committed > 0) if self.shift else np.zeros(B, bool)
        if on_boundary.any():
            w = self.window(zeros, int(committed.max()), committed, active=on_boundary)
            out = self.forward(w, "prefill", self.cache is not None, last_rows(w))
            take_next_token(out, on_boundary)
            if g.stop_at_eos:  # Fast-dLLM v2: a stop token read by the prefill ends the generation there
                done |= on_boundary & np.isin(self.x[np.arange(B), n - 1], self.eos)
                self.live = ~done
        to_prefill = (committed > 0) & ~on_boundary if self.cache is not None else np.zeros(B, bool)

        while not done.all():
            active = ~done
            s, e = committed, committed + bs
            for j in range(bs // sb):
                a, z = s + j * sb, s + (j + 1) * sb
                step = 0
                while True:
                    pending = active & ~done & np.array([(self.x[b, a[b]:z[b]] == self.mask_id).any()
                                                         for b in range(B)])
                    if not pending.any():
                        break
                    if g.cache == "none":
                        w = self.window(zeros, int(e.max()), e)
                        kind, write = "full", False
                    elif g.cache == "sub_block" and step > 0:
                        w, kind, write = self.sub_block_window(s, e, a, z, active, pending)
                    elif to_prefill.any():
                        lo = np.where(to_prefill, 0, s)
                        w = self.window(zeros, int(e.max()), e, self.past_below(lo), active, valid_start=lo)
                        kind, write = "prefill+block", True
                        to_prefill[:] = False
                    else:
                        w = self.window(s, bs, e, self.past_below(s), active)
                        kind, write = "block", g.cache == "sub_block"
                    out = self.forward(w, kind, write, self.fill_rows(w, a, sb))
                    quota = [schedule[min(step, len(schedule) - 1)]] * B if schedule else None
                    self.progress = step / (len(schedule) if schedule else sb)  # sched: the sub-block's progress
                    self.unmask(out, w, a, z, pending, quota)
                    if g.stop_at_eos:
                        done |= self.stopped(pending, e)
                        self.live = ~done
                    step += 1
            # The block is complete (or its sequences stopped).
            if self.timer is not None:
                self.timer.block_done()
            n = np.where(active, e, n)
            for b in np.flatnonzero(active):
                done[b] |= (g.stop_at_eos and self.has_eos(b, e[b])) or e[b] - self.prompt_len[b] >= g.gen_length
            # Fast-dLLM v2 returns the token its last commit forward reads: when that token completes
            # gen_length, commit once more and stop (no further block of forwards).
            last = active & ~done & (e + self.shift - self.prompt_len >= g.gen_length)
            self.live = ~done
            if done.all():
                break
            # Commit: forward the clean block to cache it (and, with the shift, read the next token).
            if g.cache == "none":
                w = self.window(zeros, int(e.max()), e)
            else:
                w = self.window(s, bs, e, self.past_below(s), active)
            out = self.forward(w, "commit", g.cache != "none", last_rows(w) if self.shift else one_row)
            committed = np.where(active, e, committed)
            if self.shift:
                take_next_token(out, ~done)
                if g.stop_at_eos:
                    done |= ~done & np.isin(self.x[np.arange(B), n - 1], self.eos)
            done |= last
            self.live = ~done
        return self.result()


def generate(backend, prompts: list[list[int]], gen: GenerationConfig | None = None, timer=None) -> GenerationResult:
    """Decode ``gen.gen_length`` tokens after each prompt (token ids) with the given backend.
    ``timer``: optional profiling hooks (see the module docstring); None costs nothing."""
    loop = DecodeLoop(backend, prompts, gen or GenerationConfig(), timer)
    if loop.gen.strategy == "freedave":
        from .freedave import run_freedave

        return run_freedave(loop)
    if loop.gen.batch_sample:
        from .batch_sample import run_batch_sample

        return run_batch_sample(loop)
    if loop.cfg.attention == "block_causal":
        return loop.run_blocks()
    return loop.run_masked()
