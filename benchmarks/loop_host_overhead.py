"""Host time of the decode loop per step, without the model: the loop's own work (windows, the
attention bias, rows, selection, records) over a backend that answers at once with B x R tokens and
confidences. That is the part of a step's "host overhead" the loop owns (a real backend adds its
uploads/downloads); the GPU run's profile (`benchmarks/llada8b_ort_cuda.py e2e`) measures the sum.

    python benchmarks/loop_host_overhead.py [--repeat 3]

LLaDA-8B's config (vocabulary 126464), prompt 64, gen 256, block 32, low-confidence remasking.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.llada8b_ort_cuda import BLOCK, GEN, LLADA_8B, PROMPT  # noqa: E402
from dllm_trt.config import ModelConfig  # noqa: E402
from dllm_trt.runtime import GenerationConfig, generate  # noqa: E402
from dllm_trt.runtime.backends import StepOutput  # noqa: E402


class _Cache:
    def __init__(self, capacity: int):
        self.capacity = capacity


class InstantBackend:
    """Answers every forward at once (random tokens and confidences for the rows read)."""

    def __init__(self, config: ModelConfig):
        self.config = config
        self.rng = np.random.default_rng(0)

    def allocate_cache(self, batch: int, capacity: int) -> _Cache:
        return _Cache(-(-capacity // 64) * 64)  # rounded as the GPU backends do

    def forward(self, ids, pos, bias, cache, past_len, write_mask, rows, want_logits=False) -> StepOutput:
        b, r = rows.shape
        z = np.zeros((b, r), np.float32)
        return StepOutput(self.rng.integers(0, 1000, (b, r)), self.rng.random((b, r)).astype(np.float32), None,
                          z, z)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    backend = InstantBackend(ModelConfig.from_dict(LLADA_8B))
    prompt = [list(range(PROMPT))]
    print(f"decode loop host time per step (no model), {time.strftime('%Y-%m-%d')}")
    print("| cache | tokens/step | steps | host ms/step (median of runs) |")
    print("| --- | --- | --- | --- |")
    for cache in ("none", "prefix", "dual"):
        for steps in (GEN, GEN // 4):
            gen = GenerationConfig(gen_length=GEN, block_length=BLOCK, steps=steps, cache=cache, stop_at_eos=False)
            generate(backend, prompt, gen)  # warm-up
            per_step = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                result = generate(backend, prompt, gen)
                per_step.append((time.perf_counter() - t0) / result.nfe * 1e3)
            print(f"| {cache} | {GEN // steps} | {result.nfe} | {statistics.median(per_step):.3f} |")


if __name__ == "__main__":
    main()
