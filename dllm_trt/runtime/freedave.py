"""FreeDave: lossless draft-and-verify parallel decoding (Wu & Zhang, "Free Draft-and-Verification: Toward
Lossless Parallel Decoding for Diffusion Large Language Models", arXiv 2510.00294; cychomatica/FreeDave).

The reference sampler is LLaDA's low-confidence schedule (``steps`` per ``gen_length``, one token per step at
steps = gen_length). From the predictions of the current state, draft k (k = 1..D, D = ``draft_steps``) commits
the tokens of the schedule's next k steps at once (the top n_1 + ... + n_k masked positions by the current
confidences). All D drafts are forwarded together, as one batched forward. Draft 1 is exactly the reference's
next state; draft k + 1 is the reference's state after k + 1 steps iff the reference step taken from draft k
(with draft k's own predictions) gives draft k + 1, token for token. The longest verified prefix of drafts is
accepted, and the accepted draft's predictions, already computed, drive the next round. Every round advances at
least one reference step and the tokens are those of the one-token-per-step (static) decode, with fewer
forwards: each forward is D times wider (on a GPU nearly free below the compute bound; on a CPU it costs about
D times as much).

Deviations from the reference code: no cache (upstream also runs it with a prefix cache); temperature 0 only
(the verified path must be the deterministic one); a request's sequences draft and verify independently, each
forward holding B x D rows (a sequence with fewer steps left pads with copies of its last draft, whose
predictions are not read).
"""
from __future__ import annotations

import numpy as np

from ..errors import DllmError
from .layout import attention_bias
from .settings import GenerationResult, StepRecord
from .unmask import select_top_k, transfer_schedule


def run_freedave(loop) -> GenerationResult:
    """Decode with FreeDave on a DecodeLoop of a bidirectional model (cache none, temperature 0)."""
    g, B = loop.gen, loop.batch
    if g.cache != "none" or g.temperature > 0:
        raise DllmError("strategy 'freedave' runs without a cache at temperature 0 (use --cache none, no sampling)")
    D = g.draft_steps
    total = loop.prompt_len + g.gen_length
    full_len = int(total.max())
    blocks = g.gen_length // g.block_length
    per_block = g.steps // blocks
    schedule = np.array(transfer_schedule(g.block_length, per_block))
    finished = np.zeros(B, bool)
    loop.live = ~finished

    def forward(states: np.ndarray, owners: np.ndarray, kind: str, live: np.ndarray):
        """Forward rows ``states`` [N, capacity] (row n a state of sequence owners[n]): the top-1 tokens and
        confidences of the rows predicting the block's positions [N, block_length]."""
        n = states.shape[0]
        pos = np.repeat(np.arange(full_len, dtype=np.int64)[None, :], n, axis=0)
        valid = pos < total[owners, None]
        ids = np.where(valid, states[:, :full_len], loop.mask_id).astype(np.int64)
        bias = attention_bias(np.where(valid, pos, 0), valid, np.zeros((n, 0), bool), loop.cfg.block_size)
        rows = (s[owners, None] + np.arange(g.block_length)[None, :] - loop.shift).astype(np.int64)
        if loop.timer is not None:
            loop.timer.forward_start(kind)
        out = loop.backend.forward(ids, pos, bias, None, 0, None, rows, False)
        if loop.timer is not None:
            loop.timer.forward_end()
        per_seq = np.bincount(owners, weights=valid.sum(axis=1), minlength=B).astype(int)  # a draft: a batch row
        loop.steps.append(StepRecord(kind, full_len, 0, [0] * B, (loop.live & live).tolist(), per_seq.tolist()))
        conf = out.confidence.astype(np.float64)
        if not np.isfinite(conf).all():
            raise DllmError(f"the model produced NaN/Inf logits at forward {len(loop.steps)}; the weights or the "
                            "graph are broken (check the export's validation, or re-export)")
        return out.tokens, conf

    def step_from(state: np.ndarray, tokens: np.ndarray, conf: np.ndarray, b: int, count: int) -> np.ndarray:
        """The state after committing the ``count`` most confident masked block positions of sequence b."""
        new = state.copy()
        j = np.flatnonzero(state[s[b]: s[b] + g.block_length] == loop.mask_id)
        chosen = j[select_top_k(conf[j], count)]
        new[s[b] + chosen] = tokens[chosen]
        return new

    def masks_left(b: int) -> int:
        return int((loop.x[b, s[b]: s[b] + g.block_length] == loop.mask_id).sum())

    for k in range(blocks):
        active = ~finished
        if not active.any():
            break
        s = loop.prompt_len + k * g.block_length
        tokens, conf = forward(loop.x, np.arange(B), "full", active)  # the reference's first forward of the block
        step = np.zeros(B, np.int64)  # reference steps taken in this block
        while True:
            todo = active & np.array([masks_left(b) > 0 for b in range(B)])
            if not todo.any():
                break
            drafts, owners, where = [], [], {}  # where[b] = (sequence b's first draft row, its number of drafts)
            for b in np.flatnonzero(todo):
                n = int(min(D, per_block - step[b]))
                counts = np.cumsum(schedule[step[b]: step[b] + n])
                states = [step_from(loop.x[b], tokens[b], conf[b], b, int(c)) for c in counts]
                where[b] = (len(drafts), n)
                drafts += states + [states[-1]] * (D - n)
                owners += [b] * D
            drafts, owners = np.stack(drafts), np.array(owners)
            rec = loop.steps[-1]  # the forward whose predictions made the drafts
            final = all(n == 1 and step[b] + 1 >= per_block for b, (_, n) in where.items())
            # a block's last reference step needs no forward of its own (upstream's neither)
            d_tok, d_conf = (None, None) if final else forward(drafts, owners, "draft", todo)
            if loop.timer is not None:
                loop.timer.unmask_start()
            for b, (first, n) in where.items():
                accepted = n - 1 if final else 0  # drafts first .. first + accepted are the reference's states
                while not final and accepted + 1 < n:
                    i = first + accepted
                    nxt = step_from(drafts[i], d_tok[i], d_conf[i], b, int(schedule[step[b] + accepted + 1]))
                    if not np.array_equal(nxt, drafts[i + 1]):
                        break
                    accepted += 1
                before = masks_left(b)
                loop.x[b] = drafts[first + accepted]
                rec.unmasked[b] += before - masks_left(b)
                step[b] += accepted + 1
                if not final:
                    tokens[b], conf[b] = d_tok[first + accepted], d_conf[first + accepted]
            if loop.timer is not None:
                loop.timer.unmask_end()
            if final:
                break
        if loop.timer is not None:
            loop.timer.block_done()
        if g.stop_at_eos:
            for b in np.flatnonzero(active):
                finished[b] = loop.has_eos(b, s[b] + g.block_length)
            loop.live = ~finished
    return loop.result()
