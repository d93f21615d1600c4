"""When the prefix/dual caches recompute their keys/values (``GenerationConfig.cache_refresh``, issue 13).

The bidirectional families' prefix and dual caches (runtime/decode.py) are approximations: a step computes
some positions (its query rows) and takes every other position's keys/values from the cache, written by an
earlier forward whose context has changed since. A refresh policy decides which rows a step computes and
when cached positions are recomputed. Every forward stays one call of the graph contract (dllm_trt/
contract.py): query rows at any positions with their own position ids, the whole cache as the past masked
by the bias (a position that is a query row is masked out of the past), and the keys/values of every query
row written back into the cache. So each policy runs unchanged on every backend (PyTorch, ONNX Runtime,
TensorRT) and inside the batching engine. The step reads back only the rows' top-1 token, probability,
margin and entropy (and logits when sampling): no attention weights and no hidden states, so nothing here
can look inside the model per layer; where the sources do, a proxy computed from the inputs or the outputs
stands in (named below).

``block`` (default)
    Fast-dLLM (Wu et al. 2025, arXiv 2505.22618): a full forward at the first step of every block refreshes
    the whole cache; later steps of the block compute the block (dual) or the block and everything after it
    (prefix) over the cached rest. Implemented in decode.py itself.

``dllm_cache``
    dLLM-Cache (Liu et al. 2025, "dLLM-Cache: Accelerating Diffusion Large Language Models with Adaptive
    Caching", arXiv 2506.06295; maple-research-lab/dLLM-cache, read through copies of it). Upstream caches,
    per layer, the prompt's and the response's keys/values and attention and MLP outputs, and counts model
    calls from 1 over the whole generation (not per block): the prompt's features are recomputed when
    ``(step - 1) % prompt_interval == 0``, the response's when ``(step - 1) % gen_interval == 0``; on the
    other steps each layer computes the value vectors of the whole response, picks the
    ``int(gen_length * transfer_ratio)`` positions whose new value is least cosine-similar to the cached one
    ("V-verify") and recomputes only those (their queries, keys, attention and MLP); the others keep their
    cached attention and MLP outputs. Here, with the same counter (0-based, one per decode step of the
    sequence, kept per sequence so that a sequence waiting for the rest of its batch does not count):

    - both due (the first step among them): a full forward, writing every position;
    - the response due: the step's rows and every response position, over the cached prompt;
    - otherwise the step's rows plus ``int(gen_length * dllm_refresh_ratio)`` response positions outside
      them, and the prompt's positions when the prompt is due.

    The step's rows are what the cache mode computes anyway (the block, dual; the block and everything
    after it, prefix): they are always recomputed and written, so every prediction the step reads is
    computed fresh over the partly stale cache.

    Deviations: (1) no per-layer features are cached, only keys/values (the graph's cache): a position that
    is not recomputed contributes its stale keys/values, and a recomputed one goes through every layer,
    one selection for all layers (upstream selects per layer). (2) V-verify needs each layer's value
    vectors, which the graph does not return; the proxy ranks the response positions by input change
    first: a position whose token changed since its keys/values were written (decoded since) comes
    before any other. At the first layer this is exactly V-verify's order (an unchanged token's first-layer
    value is identical, cosine 1; a changed token's differs). Among unchanged positions, whose values drift
    only through the context, the longest unrefreshed comes first (staleness grows with the tokens decoded
    since), then position order. (3) Upstream also overwrites every response value vector each step
    (only keys stay stale); here an unselected position keeps both. (4) Upstream may leave the rows it
    reads stale (unselected masks reuse their cached outputs, so their predictions repeat); here the rows a
    step reads are always recomputed (the contract computes a row to read it), so the selected fraction is
    spent on the cached positions outside them. With ``block_length == gen_length`` on the dual cache every
    response position is a row of the step, and only the prompt's refresh interval is left to act.
    (5) No guidance cache (upstream's ``cfg_interval_steps``): guidance runs without a cache here.

``elastic``
    Elastic-Cache (Nguyen-Tri, Ranjan, Shen 2025, "Attention Is All You Need for KV Cache in Diffusion LLMs",
    arXiv 2510.14973; VILA-Lab/Elastic-Cache, read through a copy of it). Upstream runs one full forward,
    then every forward computes only the first ``window_length`` masked positions of the generation (a
    window sliding left to right as they are decoded; ``block_caching=False``: every masked position), the
    positions decoded at the previous step, and, per layer, the token the window's masks attended most at
    the previous step. In each layer it compares that token's attention weights with its previous ones
    (cosine similarity averaged over heads); the first layer where the similarity falls below ``gamma``
    sets the layers after it to recompute every position (a layer-aware refresh inside the same forward).
    The window's masks are decoded by the threshold rule (or a fixed top-k). Here:

    - the first step of the generation is a full forward, writing every position;
    - a later step computes the window (the first ``elastic_window`` masks of the block being decoded; on
      the prefix cache every mask from the block on, upstream's ``block_caching=False``), the rows that
      predict them (shifted families), and every position whose token changed since its keys/values were
      written, which is upstream's "decoded at the previous step" (every computed row is written back);
    - the drift test: over the window's masks that were also read at the previous step, the mean of their
      similarity, ``min(p, p') / max(p, p')`` when the top-1 token is the same and 0 when it changed; when it
      is below ``elastic_gamma`` the step is redone by a full forward that refreshes every position, and
      the step decodes from that forward (as upstream decodes from its refreshed layers);
    - the strategy (any of the decode loop's) fills positions of the window only.

    Deviations: (1) no attention weights: the drift of the most-attended token's attention is replaced
    by the drift of the window's own predictions between consecutive steps. A still-masked position's
    input does not change, so a change in its prediction is a change of the context it sees, the same
    context change that makes the cached keys/values stale; upstream's premise is that the tracked token's
    attention drifts with the cached states, this proxy takes the window's outputs as that witness (and no
    "most attended" token is recomputed for it). (2) The refresh recomputes every layer (the contract has
    no per-layer recompute), in a second forward: a drift step costs the window's forward plus a full one.
    ``elastic_gamma > 1`` refreshes every step, so the window's forward is skipped (it cannot change the
    outcome). (3) The window slides within the block being decoded (``block_length = gen_length``: over the
    whole generation, as upstream), and a new block does not refresh the cache. (4) Masks after a decoded
    EOS are decoded as in every other mode (upstream drops them).

Determinism: every decision is taken per sequence (its own step count, rows and drift test; a refresh
forward carries only the sequences that refresh), so a prompt gives the same tokens alone or in a batch.
Cost: a step is one forward of explicit rows, plus one full forward for the sequences that refresh (for
dLLM-Cache a sequence does one or the other; for Elastic-Cache a drifting sequence does both).
"""
from __future__ import annotations

import numpy as np

from .backends import StepOutput


def dllm_cache_due(step: int, prompt_interval: int, response_interval: int) -> tuple[bool, bool]:
    """Whether dLLM-Cache refreshes the prompt and the response at decode step ``step`` (0-based; upstream's
    ``(current_step - 1) % interval == 0`` with its 1-based count)."""
    return step % prompt_interval == 0, step % response_interval == 0


def stale_order(positions: np.ndarray, changed: np.ndarray, written_at: np.ndarray) -> np.ndarray:
    """dLLM-Cache's partial-refresh priority (the V-verify proxy): indices into ``positions``, those whose token
    changed since their keys/values were written first, then the longest unrefreshed, then by position."""
    return np.lexsort((positions, written_at, ~changed))


def drift_similarity(prev: dict[int, tuple[int, float]], positions: np.ndarray, tokens: np.ndarray,
                     conf: np.ndarray) -> float:
    """Elastic-Cache's drift test, on predictions: the mean over ``positions`` read at the previous step too of
    ``min(p, p') / max(p, p')`` (same top-1 token) or 0 (it changed); 1.0 when none was read before."""
    sims = []
    for p, t, c in zip(positions.tolist(), tokens.tolist(), conf.tolist()):
        if p not in prev:
            continue
        pt, pc = prev[p]
        top = max(c, pc)
        sims.append(0.0 if t != pt else (min(c, pc) / top if top > 0 else 1.0))
    return float(np.mean(sims)) if sims else 1.0


def merge_outputs(keep: StepOutput, new: StepOutput, take_new: np.ndarray) -> StepOutput:
    """Per sequence, the rows of ``new`` where ``take_new`` and those of ``keep`` elsewhere (same row layout)."""
    def pick(a, b):
        if a is None or b is None:
            return None
        which = take_new.reshape((-1,) + (1,) * (a.ndim - 1))
        return np.where(which, b, a)

    return StepOutput(*(pick(a, b) for a, b in zip(keep, new)))


class RefreshPolicy:
    """What a decode loop with ``cache_refresh`` dllm_cache or elastic keeps, per sequence: for each cache position
    the token whose keys/values the cache holds (-1: never written) and the step that wrote them, the steps it
    took (its own count: a sequence waiting for the others of its batch does not step), and (elastic) the
    window's predictions of its previous step. A step runs at most two forwards: the computed rows of the
    sequences that reuse the cache, and one full forward for those that refresh it (each sequence takes part
    in one of them; elastic: both, when its drift test fails)."""

    def __init__(self, loop):
        self.loop = loop
        self.gen = loop.gen
        b, c = loop.batch, loop.past_len
        self.kv_token = np.full((b, c), -1, np.int64)
        self.kv_step = np.zeros((b, c), np.int64)
        self.clock = np.zeros(b, np.int64)  # decode steps each sequence took
        self.prev: list[dict[int, tuple[int, float]]] = [{} for _ in range(b)]
        self.refreshes = 0  # elastic: full forwards the drift test triggered (per sequence)

    # ------------------------------------------------------------------ bookkeeping
    def written(self, pos: np.ndarray, valid: np.ndarray, ids: np.ndarray) -> None:
        """A forward wrote the keys/values of its valid rows (positions ``pos``, input tokens ``ids``)."""
        b, r = np.nonzero(valid)
        p = pos[b, r]
        self.kv_token[b, p] = ids[b, r]
        self.kv_step[b, p] = self.clock[b]

    def changed(self, b: int, end: int) -> np.ndarray:
        """Positions below ``end`` whose token is not the one their cached keys/values were computed from."""
        return np.flatnonzero(self.kv_token[b, :end] != self.loop.x[b, :end])

    def past(self, rows: list[np.ndarray], total: np.ndarray) -> np.ndarray:
        """The cache positions a step may attend: written, inside the sequence, and not one of its query rows."""
        visible = (np.arange(self.loop.past_len)[None, :] < total[:, None]) & (self.kv_token >= 0)
        for b, r in enumerate(rows):
            visible[b, r] = False
        return visible

    # ------------------------------------------------------------------ forwards
    def full(self, who: np.ndarray, s: np.ndarray, total: np.ndarray):
        """A full forward of the sequences ``who`` (the others ride along), writing every position: a refresh."""
        loop = self.loop
        w = loop.window(np.zeros(loop.batch, np.int64), int(total.max()), total, active=who)
        return w, loop.forward(w, "full", True, loop.fill_rows(w, s, self.gen.block_length))

    def step(self, s: np.ndarray, e: np.ndarray, total: np.ndarray, lead: int, pending: np.ndarray):
        """One decode step of block [s, e) for the ``pending`` sequences: its forwards, and ``(window, output,
        fill_end)`` for the loop's unmasking (the output's rows: the block's positions, per sequence from the
        forward it decodes from)."""
        if self.gen.cache_refresh == "dllm_cache":
            rows, kinds, refresh, fill_end = self.dllm_cache_rows(s, e, total, lead, pending)
        else:
            rows, kinds, refresh, fill_end = self.elastic_rows(s, e, total, pending)
        w = out = None
        if any(r.size for r in rows):
            w = self.loop.rows_window(rows, self.past(rows, total))
            kind = "+".join(k for k in ("response", "prompt", "partial", "elastic") if k in kinds)
            out = self.loop.forward(w, kind, True, self.loop.fill_rows(w, s, self.gen.block_length))
            if self.gen.cache_refresh == "elastic":
                refresh |= self.drifted(out, s, e, pending & ~refresh)
        if refresh.any():
            wf, fresh = self.full(refresh, s, total)
            w, out = (wf, fresh) if out is None else (w, merge_outputs(out, fresh, refresh))
        if self.gen.cache_refresh == "elastic":
            self.remember(out, s, e, pending)
        self.clock += pending
        return w, out, fill_end

    # ------------------------------------------------------------------ dLLM-Cache
    def dllm_cache_rows(self, s, e, total, lead, pending):
        """Per sequence: the rows of its step (empty: it refreshes with a full forward, or does not step)."""
        g, loop = self.gen, self.loop
        k = int(g.gen_length * g.dllm_refresh_ratio)
        rows, kinds, refresh = [], set(), np.zeros(loop.batch, bool)
        for b in range(loop.batch):
            prompt_due, response_due = dllm_cache_due(int(self.clock[b]), g.dllm_prompt_interval,
                                                      g.dllm_response_interval)
            if not pending[b] or (prompt_due and response_due):
                refresh[b] = pending[b]
                rows.append(np.zeros(0, np.int64))
                continue
            lo, hi, p = int(s[b]) - lead, int(total[b] if g.cache == "prefix" else e[b]), int(loop.prompt_len[b])
            parts = [np.arange(lo, hi)]
            if response_due:
                parts.append(np.arange(p, int(total[b])))
            elif k > 0:
                cand = np.arange(p, int(total[b]))
                cand = cand[(cand < lo) | (cand >= hi)]
                changed = self.kv_token[b, cand] != loop.x[b, cand]
                parts.append(cand[stale_order(cand, changed, self.kv_step[b, cand])[:k]])
            if prompt_due:
                parts.append(np.arange(0, p))
            r = np.unique(np.concatenate(parts))
            if r.size == total[b]:  # every position: a full forward
                refresh[b] = True
                r = np.zeros(0, np.int64)
            else:
                kinds.add("response" if response_due else "prompt" if prompt_due else "partial")
            rows.append(r)
        return rows, kinds, refresh, e

    # ------------------------------------------------------------------ Elastic-Cache
    def window(self, b: int, s: np.ndarray, e: np.ndarray) -> np.ndarray:
        """The first elastic_window masked positions of sequence b's block."""
        loop = self.loop
        return int(s[b]) + np.flatnonzero(loop.x[b, s[b]: e[b]] == loop.mask_id)[: self.gen.elastic_window]

    def elastic_rows(self, s, e, total, pending):
        g, loop = self.gen, self.loop
        rows, fill_end = [], e.copy()
        refresh = pending & ((self.clock == 0) | (g.elastic_gamma > 1))  # the first step; every step (no test)
        for b in range(loop.batch):
            win = self.window(b, s, e)
            if win.size == g.elastic_window:
                fill_end[b] = win[-1] + 1
            if not pending[b] or refresh[b]:
                rows.append(np.zeros(0, np.int64))
                continue
            if g.cache == "prefix":  # upstream's block_caching=False: every mask from the block on
                masks = int(s[b]) + np.flatnonzero(loop.x[b, s[b]: total[b]] == loop.mask_id)
            else:
                masks = win
            rows.append(np.unique(np.concatenate([masks, win - loop.shift, self.changed(b, int(total[b]))])))
        return rows, {"elastic"}, refresh, fill_end

    def drifted(self, out: StepOutput, s, e, who: np.ndarray) -> np.ndarray:
        """The drift test of the sequences ``who`` on this step's window predictions."""
        drift = np.zeros(self.loop.batch, bool)
        for b in np.flatnonzero(who):
            win = self.window(b, s, e)
            j = win - s[b]
            drift[b] = drift_similarity(self.prev[b], win, out.tokens[b, j], out.confidence[b, j]) < self.gen.elastic_gamma
        self.refreshes += int(drift.sum())
        return drift

    def remember(self, out: StepOutput, s, e, pending: np.ndarray) -> None:
        """The window's predictions of this step, for the next step's drift test."""
        for b in np.flatnonzero(pending):
            win = self.window(b, s, e)
            j = win - s[b]
            self.prev[b] = dict(zip(win.tolist(), zip(out.tokens[b, j].tolist(),
                                                      out.confidence[b, j].astype(float).tolist())))
