"""State that a decoding method keeps across the steps of a block (the stateless rules are in unmask.py).

dInfer's credit decoding (inclusionAI/dInfer, ``CreditThresholdParallelDecoder``; docs/source/start/
advanced_decoding.rst "Credit-Based Threshold Decoding"): every step, the credit of each masked position's
top-1 token grows by ``p ** gamma`` (p its probability) after all credits of the block decayed by ``decay``;
the step then applies the threshold rule to the probabilities of the logits fused as
``logits + alpha * log(1 + credit)``, so a token that stays the favourite step after step is committed before
its own probability reaches the threshold.

Deviation (the device-side step returns each row's top-1 token and probability, not its logits): the fused
probability of the row's top-1 token v is p (1 + C_v)^alpha / (p (1 + C_v)^alpha + (1 - p) (1 + C_o)^alpha),
C_o the largest credit of another token at that position. Exact while v is the only credited token (the
rest of the row keeps its unfused mass 1 - p); otherwise a lower bound (as if all the rest of the mass were on
the most credited other token), so the rule never commits earlier than upstream would. The committed token is
the unfused top-1 (upstream takes the fused argmax: they differ only when another credited token overtakes v,
and then the bound keeps v's fused probability below 1/2).
"""
from __future__ import annotations

import numpy as np


class CreditState:
    """Per sequence: the block the credits belong to, the number of steps seen in it, and per position the
    credit of every token that was its top-1."""

    def __init__(self, batch: int, alpha: float, gamma: float, decay: float):
        self.alpha, self.gamma, self.decay = alpha, gamma, decay
        self.block: list[tuple[int, int] | None] = [None] * batch
        self.iters = [0] * batch
        self.credit: list[dict[int, dict[int, float]]] = [{} for _ in range(batch)]

    def fuse(self, b: int, block: tuple[int, int], positions: np.ndarray, tokens: np.ndarray,
             conf: np.ndarray) -> np.ndarray:
        """Add this step's credit for the masked ``positions`` of sequence b (top-1 ``tokens``, probabilities
        ``conf``) and return the fused probabilities of those tokens."""
        if self.block[b] != block:  # a new block: upstream keys its credit matrix by the block
            self.block[b], self.iters[b], self.credit[b] = block, 0, {}
        table = self.credit[b]
        if self.iters[b] > 0:
            for row in table.values():
                for t in row:
                    row[t] *= self.decay
        self.iters[b] += 1
        p = np.asarray(conf, np.float64)
        fused = np.empty_like(p)
        for i, (pos, tok) in enumerate(zip(positions.tolist(), tokens.tolist())):
            row = table.setdefault(pos, {})
            row[tok] = row.get(tok, 0.0) + float(p[i]) ** self.gamma
            other = max((c for t, c in row.items() if t != tok), default=0.0)
            up = p[i] * (1.0 + row[tok]) ** self.alpha
            fused[i] = up / (up + (1.0 - p[i]) * (1.0 + other) ** self.alpha)
        return fused
