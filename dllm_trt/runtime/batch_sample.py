"""Fast-dLLM v2's evaluation harness, ``batch_sample`` (v2/generation_functions.py), on any backend.

The default loop (decode.py ``run_blocks``) decodes each row of a batch as that prompt alone decodes, so a prompt
gets the same tokens in any batch. The harness instead decodes a batch on one grid of absolute blocks, and some
of its decisions are the batch's (docs/upstream_semantics.md row 6): the prompts are right-padded with the mask
token to the longest (the padding is decoded as generation), the prefill covers the shortest prompt's whole
blocks, the block cache's sub-block refresh happens for every row when any row's sub-block opens with a mask,
and its buffer bookkeeping can overwrite a prompt's last token with the commit's prediction or leave a row's
first token to the next block's diffusion. A harness evaluation's tokens therefore depend on the batch they ran
in. ``GenerationConfig(batch_sample=True)`` reproduces them, forward for forward, on the backend's forward call
(positions, attention bias, cache slots): greedy (temperature 0) threshold decoding, ``max_new_tokens`` =
``gen_length``, ``use_block_cache`` = ``cache="sub_block"``, ``small_block_size`` = ``sub_block_length``.

Each row's result is what the harness returns for it after its prompt: cut before its stop token (which ends a
row) with ``stop_at_eos``, else its whole buffer (past ``gen_length`` when the longest prompt adds blocks).
"""
from __future__ import annotations

import numpy as np

from ..errors import DllmError
from .layout import attention_bias
from .settings import GenerationResult, StepRecord
from .unmask import select_threshold


class _Harness:
    """The harness's state: the shared buffer (``input_ids``, ``width`` columns) and the block's copy (``x_t``)."""

    def __init__(self, loop):
        self.loop = loop
        self.B, self.bs, self.mask = loop.batch, loop.block_size, loop.mask_id
        cap = loop.capacity + loop.block_size + 2
        self.seq_len = loop.prompt_len.copy()
        self.buf = np.full((self.B, cap), self.mask, np.int64)
        self.buf[:, : loop.x.shape[1]] = loop.x  # prompts right-padded with the mask
        self.width = int(self.seq_len.max())
        self.xt = self.buf.copy()
        self.width_t = self.width
        # a shortest prompt of exactly one block is neither prefilled nor attended (``min_len > block_size``): the
        # model numbers positions from its cache, so every later block sits one block lower
        self.offset = self.bs if int(self.seq_len.min()) == self.bs else 0
        self.member = np.ones(self.B, bool)  # rows still in the batch (finished rows leave at a block's end)
        self.finished = np.zeros(self.B, bool)
        self.outputs: dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------ one forward
    def forward(self, lo: int, hi: int, past: np.ndarray, write: bool, rows: np.ndarray, kind: str):
        """Columns [lo, hi) of ``x_t`` for the batch's rows over the cache slots ``past`` [C] marks; ``write``
        stores their keys/values; ``rows`` [R] are the query rows read back (the same for every row)."""
        loop, B = self.loop, self.B
        length = hi - lo
        pos = np.broadcast_to(np.arange(lo, hi) - self.offset, (B, length)).copy()
        valid = np.broadcast_to(self.member[:, None], (B, length)).copy()
        ids = np.where(valid, self.xt[:, lo:hi], self.mask)
        past_valid = np.broadcast_to(past[None, :], (B, past.size)) & self.member[:, None]
        bias = attention_bias(pos, valid, past_valid, self.bs)
        if loop.timer is not None:
            loop.timer.forward_start(kind)
        out = loop.backend.forward(ids, pos, bias, loop.cache, loop.past_len, valid if write else None,
                                   np.broadcast_to(rows[None, :], (B, rows.size)).astype(np.int64).copy(), False)
        if loop.timer is not None:
            loop.timer.forward_end()
        seen = np.flatnonzero(past)
        loop.steps.append(StepRecord(kind, length, int(seen[-1]) + 1 if seen.size else 0, [0] * B,
                                     self.member.tolist(), valid.sum(axis=1).tolist()))
        return out

    def slots(self, end: int) -> np.ndarray:
        """Cache slots of buffer columns [0, end) (the committed blocks)."""
        return np.arange(self.loop.past_len) < end - self.offset

    def slot_range(self, lo: int, hi: int) -> np.ndarray:
        idx = np.arange(self.loop.past_len)
        return (idx >= lo - self.offset) & (idx < hi - self.offset)

    # ------------------------------------------------------------------ the threshold rule
    def unmask(self, out, a: int, z: int) -> None:
        """Masked positions of [a, z) of every row in the batch, from the rows read back (one per position):
        those above the threshold and always the most confident; a stop token taken finishes its row."""
        loop, g = self.loop, self.loop.gen
        rec = loop.steps[-1]
        if loop.timer is not None:
            loop.timer.unmask_start()
        for b in np.flatnonzero(self.member):
            j = np.flatnonzero(self.xt[b, a:z] == self.mask)
            if j.size == 0:
                continue
            conf = loop._checked(out.confidence[b, j].astype(np.float64), b)
            chosen = select_threshold(conf, g.threshold, False, 1)
            tokens = out.tokens[b, j][chosen]
            self.xt[b, a + j[chosen]] = tokens
            rec.unmasked[b] += int(chosen.size)
            if g.stop_at_eos and np.isin(tokens, loop.eos).any():
                self.finished[b] = True
        if loop.timer is not None:
            loop.timer.unmask_end()

    # ------------------------------------------------------------------ the harness
    def prefill(self) -> int:
        """The shortest prompt's whole blocks, for every row (when it is longer than one block); a shortest prompt
        that ends on a block boundary reads its next token there. Returns the cached columns."""
        min_len, bs = int(self.seq_len.min()), self.bs
        if min_len <= bs:
            return self.offset
        k = min_len // bs * bs
        out = self.forward(0, k, self.slots(0), True, np.array([k - 1]), "prefill")
        if min_len % bs == 0:
            ends = self.seq_len == min_len
            if self.width <= min_len:  # every prompt is that long: the buffer grows by the token
                self.width += 1
            self.buf[ends, min_len] = out.tokens[ends, 0]
            self.xt[:, : self.width] = self.buf[:, : self.width]
            for b in np.flatnonzero(ends):
                self.loop.steps[-1].unmasked[b] += 1
        return k

    def run(self) -> GenerationResult:
        loop, g, bs, B = self.loop, self.loop.gen, self.bs, self.B
        sb = g.sub_block_length
        if sb <= 0 or bs % sb:
            raise DllmError(f"sub_block_length {sb} must divide the block size {bs}")
        num_blocks = g.gen_length // bs + int(self.seq_len.max()) // bs
        past_end = self.prefill()
        seq_block = self.seq_len // bs
        for blk in range(int(self.seq_len.min()) // bs, num_blocks):
            if not self.member.any():
                break
            end = (blk + 1) * bs
            if (seq_block[self.member] == blk).all():  # the buffer grows to the next block boundary
                new_width = self.width + (bs - self.width % bs)
                self.buf[:, self.width:new_width] = self.mask
                self.width = new_width
                self.width_t = new_width
            else:
                self.width_t = min(self.width, end)
            self.xt[:, : self.width_t] = self.buf[:, : self.width_t]
            lo, hi = self.width_t - bs, self.width_t
            if lo != past_end:  # the model numbers the block's positions from its cache's length
                raise DllmError(f"batch_sample's block {blk} starts at column {lo} over {past_end} cached columns: "
                                "a layout this reproduction does not cover; decode these prompts in another batch")
            refreshed = False  # the block cache holds this block (use_block_cache)
            while True:
                if not (self.xt[self.member, lo:hi] == self.mask).any():  # the block is complete: commit it
                    if (self.finished | ~self.member).all():
                        break
                    out = self.forward(lo, hi, self.slots(past_end), True, np.array([bs - 1]), "commit")
                    past_end = hi
                    nxt = np.where(self.finished, self.xt[:, hi], out.tokens[:, 0])
                    self.xt[:, hi] = nxt
                    self.width_t = hi + 1
                    for b in np.flatnonzero(self.member & ~self.finished):
                        loop.steps[-1].unmasked[b] += 1
                    break
                for j in range(bs // sb):
                    a, z = lo + j * sb, lo + (j + 1) * sb
                    while (self.xt[self.member, a:z] == self.mask).any():
                        # the shifted logits: position p reads row p - 1, the block's first position its own row
                        block_rows = np.maximum(np.arange(a, z) - 1, lo) - lo
                        if g.cache != "sub_block":
                            out = self.forward(lo, hi, self.slots(past_end), False, block_rows, "block")
                        elif not refreshed or (self.xt[self.member, a] == self.mask).any():
                            out = self.forward(lo, hi, self.slots(past_end), True, block_rows, "block")
                            refreshed = True
                        else:  # the sub-block over the block's cache, its own keys fresh
                            past = self.slots(past_end) | (self.slot_range(lo, hi) & ~self.slot_range(a, z))
                            out = self.forward(a, z, past, False, np.maximum(np.arange(a, z) - 1, a) - a,
                                               "sub_block")
                        self.unmask(out, a, z)
            self.after_block(blk, end, seq_block)
        for b in np.flatnonzero(self.member):
            self.outputs[b] = self.xt[b, : self.width_t].copy()
        return self.result()

    def after_block(self, blk: int, end: int, seq_block: np.ndarray) -> None:
        """The harness's buffer after block ``blk``: the block's tokens (and the commit's) copied back as it copies
        them, the rows whose prompt ended in it moved to the next block, and finished rows out of the batch."""
        bs = self.bs
        if self.width == self.width_t:
            self.buf[:, : self.width_t] = self.xt[:, : self.width_t]
        else:
            head = min(self.width, end)
            if head != self.width_t - 1:
                raise DllmError("batch_sample's buffer update fails here upstream (its block and buffer widths "
                                "disagree); decode these prompts in another batch")
            self.buf[:, :head] = self.xt[:, :head]
            if (seq_block[self.member] == blk).all():
                self.buf[:, self.width] = self.xt[:, self.width_t - 1]
                self.width += 1
            elif self.width <= end:
                self.buf[:, : self.width_t] = self.xt[:, : self.width_t]
                self.width = self.width_t
            else:
                rows = self.member & (seq_block == blk)
                self.buf[rows, end] = self.xt[rows, end]
        seq_block[seq_block == blk] = blk + 1
        for b in np.flatnonzero(self.member & self.finished):
            self.outputs[b] = self.xt[b, : self.width_t].copy()
            self.member[b] = False

    def result(self) -> GenerationResult:
        loop, eos = self.loop, set(self.loop.eos.tolist())
        tokens = []
        for b in range(self.B):
            toks = self.outputs[b][self.seq_len[b]:].tolist()
            if loop.gen.stop_at_eos:
                toks = toks[: next((i for i, t in enumerate(toks) if t in eos), len(toks))]
            tokens.append(toks)
        return GenerationResult(tokens, len(loop.steps), loop.steps)


def run_batch_sample(loop) -> GenerationResult:
    """Decode ``loop``'s batch as Fast-dLLM v2's batch_sample does (see the module docstring)."""
    return _Harness(loop).run()
