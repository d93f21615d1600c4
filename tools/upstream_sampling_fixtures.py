"""Reference outputs of the upstream sampling code at temperature > 0, as a JSON fixture for
tests/test_upstream_sampling.py (what a sampled decode may draw and how it ranks the draws; the draws
themselves come from torch's RNG and cannot be compared token for token).

    /path/to/upstream-venv/bin/python tools/upstream_sampling_fixtures.py --upstream DIR

Runs, on seeded random float32 logits rows (plus rows with exact ties at the nucleus boundary), the
upstream functions themselves (read from ``--upstream``, never copied here):

* Fast-dLLM ``llada/generate.py`` ``get_transfer_index`` (temperature > 0, low-confidence remasking, a
  threshold): its Gumbel-max proposals ``x0`` and the positions it transfers, which it ranks by
  ``softmax(logits)[x0]`` (the probability before temperature);
* SDAR ``generate.py`` ``top_k_logits`` then ``top_p_logits``: which entries stay;
* Fast-dLLM v2 ``modeling.py`` ``sample_with_top_p``: the renormalised nucleus probabilities.

Writes ``tests/fixtures/upstream/sampling/cases.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "upstream" / "sampling" / "cases.json"


def rows(rng: np.random.Generator, n: int, v: int, scale: float) -> np.ndarray:
    return (rng.standard_normal((n, v)) * scale).astype(np.float32)


def tie_rows(v: int) -> np.ndarray:
    """Four equal leaders (probability 0.25 each after the filters): the boundary of top-p 0.5 / 0.75."""
    z = np.full((2, v), -30.0, np.float32)
    z[0, [2, 5, 6, 9]] = 3.0
    z[1, [1, 4, 7, 8]] = 2.0
    return z


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch

    up = args.upstream
    rng = np.random.default_rng(args.seed)
    cases: dict = {"llada_transfer": [], "sdar_filter": [], "v2_top_p": []}

    sys.path.insert(0, str(up / "Fast-dLLM" / "llada"))
    import generate as fd  # Fast-dLLM's LLaDA generate.py

    for i, (temperature, threshold, scale) in enumerate([(0.5, 0.6, 2.0), (0.7, 0.3, 1.0), (1.5, 0.5, 3.0),
                                                        (0.3, 0.9, 4.0), (1.0, 0.2, 1.5), (0.8, 0.7, 2.5)]):
        b, length, v = 2, 12, 40
        logits = np.stack([rows(rng, length, v, scale) for _ in range(b)])
        mask = rng.random((b, length)) < 0.7
        mask[:, 0] = True
        x = np.full((b, length), 39, np.int64)
        torch.manual_seed(100 + i)
        x0, transfer = fd.get_transfer_index(torch.tensor(logits), temperature, "low_confidence",
                                             torch.tensor(mask), torch.tensor(x), None, threshold=threshold)
        cases["llada_transfer"].append({"temperature": temperature, "threshold": threshold, "logits": logits.tolist(),
                                        "mask": mask.tolist(), "x0": x0.tolist(), "transfer": transfer.tolist()})

    sdar_dir = up / "SDAR"
    sys.path.insert(0, str(sdar_dir))
    import importlib.util

    spec = importlib.util.spec_from_file_location("sdar_generate", sdar_dir / "generate.py")
    sdar = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sdar)
    settings = [(1.0, 0, 0.9), (0.7, 5, 0.8), (1.3, 0, 0.5), (0.5, 3, 0.95), (1.0, 0, 0.75), (1.0, 4, 0.5)]
    for temperature, top_k, top_p in settings:
        for z in (rows(rng, 6, 50, 2.0), np.pad(tie_rows(10), ((0, 0), (0, 40)), constant_values=-30.0)):
            t = torch.tensor(z) / temperature if temperature != 1.0 else torch.tensor(z)
            if top_k > 0:
                t = sdar.top_k_logits(t, top_k)
            t = sdar.top_p_logits(t, top_p)
            cases["sdar_filter"].append({"temperature": temperature, "top_k": top_k, "top_p": top_p,
                                         "logits": z.tolist(), "kept": torch.isfinite(t).tolist()})

    sys.path.insert(0, str(REPO / "tools"))
    import upstream_fixtures as F  # the hub-style folder (relative imports) imported as a package

    v2 = importlib.import_module(F._package_from_dir(up / "Fast_dLLM_v2_7B", "up_fast_dllm_v2") + ".modeling")
    cls = v2.Fast_dLLM_QwenForCausalLM
    for temperature, top_p in [(0.7, 0.95), (1.0, 0.5), (1.2, 0.8), (0.4, 0.75), (1.0, 0.6)]:
        for z in (rows(rng, 5, 50, 2.0), np.pad(tie_rows(10), ((0, 0), (0, 40)), constant_values=-30.0)):
            torch.manual_seed(0)
            _, p = cls.sample_with_top_p(None, torch.tensor(z)[None], top_p=top_p, temperature=temperature)
            cases["v2_top_p"].append({"temperature": temperature, "top_p": top_p, "logits": z.tolist(),
                                      "probs": p[0].double().tolist()})

    cases["sources"] = {"llada_transfer": "Fast-dLLM llada/generate.py get_transfer_index",
                        "sdar_filter": "SDAR generate.py top_k_logits, top_p_logits",
                        "v2_top_p": "Fast_dLLM_v2_7B modeling.py sample_with_top_p",
                        "torch": torch.__version__}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(cases))
    print(f"wrote {OUT}: " + ", ".join(f"{k} {len(v)}" for k, v in cases.items() if isinstance(v, list)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
