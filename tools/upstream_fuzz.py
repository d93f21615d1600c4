"""Randomized differential testing against the upstream decode code (a one-off driver, not a test).

Two steps, two environments (as tools/upstream_fixtures.py):

``upstream``  (the venv with transformers; see tools/upstream_fixtures.py's docstring)
    Draws random settings per upstream function, within the ranges the function accepts, runs the
    upstream code on the tiny fixture checkpoints and writes a cases.json-like file (same case
    format as the fixtures: ``tools/upstream_fixtures._case``). Settings upstream rejects (its
    asserts, shape errors) are recorded under ``"rejected"`` and not compared.

``check``     (the project environment)
    Maps every case with tests/test_upstream_fidelity.py's ``MAPPERS`` and compares it with
    that test's ``check`` (equal tokens, NFE no larger) on the torch backend; prints every
    mismatch, separating those a documented difference (the mapper's ``gap``) explains.

Usage::

    /work/upstream-venv/bin/python tools/upstream_fuzz.py upstream --upstream /work/upstream-src \\
        --family llada --n 60 --seed 0 --out /tmp/fuzz/llada.json
    PYTHONPATH=. python tools/upstream_fuzz.py check /tmp/fuzz/llada.json

Only greedy settings are drawn (temperature 0; SDAR at temperature 1 with the fixture tool's
argmax substitute and no top-k / top-p): everything else draws from torch's RNG.

``--big`` widens the draws (prompts and generations up to 96 tokens, blocks up to 32, Fast-dLLM v2's
default block); ``--chat`` mixes the family's special tokens (EOS / stop ids) into half of the prompts,
so stop tokens appear in prompts and more often in outputs. Without them a seed draws exactly what it
drew before the flags existed.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))


# --------------------------------------------------------------------------------- draws
# ``--big`` widens the draws (prompts up to 96 tokens, generations up to 96, blocks up to 32); ``--chat``
# draws half of the prompts with the family's special tokens (EOS / stop ids included) mixed in. Both off:
# the draws of the earlier runs, seed for seed.
WIDE = {"big": False, "chat": False}


def _max_prompt() -> int:
    return 96 if WIDE["big"] else 40


def _plen(rng: random.Random, block: int) -> int:
    """A prompt length in 1..40 (``--big``: 1..96), half of the time next to a multiple of ``block``."""
    top = _max_prompt()
    if rng.random() < 0.5:
        n = block * rng.randint(1, max(1, top // block)) + rng.choice((-1, 0, 1))
        return min(top, max(1, n))
    return rng.randint(1, top)


def _blocks(rng: random.Random, lengths=(2, 4, 8, 16), max_gen: int = 32) -> tuple[int, int]:
    if WIDE["big"]:
        lengths, max_gen = tuple(lengths) + (32,), 3 * max_gen
    block = rng.choice(lengths)
    nb = rng.randint(1, max(1, max_gen // block))
    return block, nb


def _prompts(F, family: str, lengths: list[int], seed: int, rng: random.Random) -> list[list[int]]:
    """F.prompts (byte tokens); with ``--chat`` each prompt is, with probability 1/2, F.chat_like_prompt instead."""
    out = F.prompts(family, lengths, seed=seed)
    if WIDE["chat"]:
        out = [F.chat_like_prompt(family, n, seed + j) if rng.random() < 0.5 else p
               for j, (n, p) in enumerate(zip(lengths, out))]
    return out


# ------------------------------------------------------------------------------ upstream runs
def fuzz_llada(F, up: Path, rng: random.Random, n: int):
    import torch

    sys.path.insert(0, str(up / "Fast-dLLM" / "llada"))
    import generate as fd
    from model.modeling_llada import LLaDAModelLM

    model = F._load_strict(LLaDAModelLM, F.OUT / "llada")
    counter = F.Counter(model)
    mask = F.sid("llada", "<|mdm_mask|>")
    eos, eot = F.sid("llada", "<|endoftext|>"), F.sid("llada", "<|eot_id|>")
    pad = F.config_json("llada")["pad_token_id"]
    orig = F._llada_generate_tiny_ids(up, eos, eot)
    cases, rejected = [], []
    for fn in ("generate", "generate_with_prefix_cache", "generate_with_dual_cache", "orig_generate"):
        for k in range(n):
            seed = rng.randrange(10 ** 6)
            block, nb = _blocks(rng)
            spb = rng.choice([rng.randint(1, block), block, block, max(1, block // 2), block + rng.randint(1, 3)])
            kw = dict(steps=spb * nb, gen_length=block * nb, block_length=block, temperature=0.0,
                      remasking="low_confidence", mask_id=mask)
            bsz = rng.choice((1, 1, 2, 3))
            am = None
            if fn == "orig_generate":
                lens = [_plen(rng, block) for _ in range(bsz)]
                raw = [F.chat_like_prompt("llada", m, seed + j) if rng.random() < 0.5 else
                       F.prompts("llada", [m], seed + j)[0] for j, m in enumerate(lens)]
                width = max(lens)
                batch = [[pad] * (width - len(p)) + p for p in raw]
                am = [[0] * (width - len(p)) + [1] * len(p) for p in raw]
                kw.update(cfg_scale=rng.choice((0.0, 0.0, 0.5, 1.5)), logits_eos_inf=rng.random() < 0.4,
                          confidence_eos_eot_inf=rng.random() < 0.4)
            else:
                batch = _prompts(F, "llada", [_plen(rng, block)] * bsz, seed, rng)
                rule = rng.random()
                if rule < 0.35:
                    kw["threshold"] = round(rng.uniform(0.05, 0.99), 3)
                elif rule < 0.65:
                    kw["factor"] = round(rng.uniform(0.2, 3.0), 3)
            counter.n = 0
            try:
                if fn == "orig_generate":
                    x = orig.generate(model, torch.tensor(batch), attention_mask=torch.tensor(am), **kw)
                    extra = dict(attention_mask=am)
                else:
                    x, nfe = getattr(fd, fn)(model, torch.tensor(batch), **kw)
                    extra = dict(returned_nfe=int(nfe))
            except Exception as e:  # noqa: BLE001 - upstream refuses the setting
                rejected.append(dict(function=fn, kwargs=kw, prompts=batch, error=repr(e)[:300]))
                continue
            gs = [len(batch[0])] * len(batch)
            cases.append(F._case("generate" if fn == "orig_generate" else fn, kw, batch, x.tolist(), counter.n, gs,
                                 **extra))
    return cases, rejected


def fuzz_dream(F, up: Path, rng: random.Random, n: int):
    import torch

    sys.path.insert(0, str(up / "Fast-dLLM" / "dream"))
    from model.modeling_dream import DreamModel
    from model import generation_utils as plain_utils
    from model import generation_utils_block as block_utils

    model = F._load_strict(DreamModel, F.OUT / "dream")
    counter = F.Counter(model)
    mask = F.sid("dream", "<|mask|>")
    pad = F.config_json("dream")["pad_token_id"]
    algs = ("entropy", "maskgit_plus", "topk_margin", "confidence_threshold")

    def use(utils) -> None:
        model.diffusion_generate = types.MethodType(utils.DreamGenerationMixin.diffusion_generate, model)
        model._sample = types.MethodType(utils.DreamGenerationMixin._sample, model)

    def filters(kw):
        kw["top_p"] = rng.choice((None, None, round(rng.uniform(0.3, 0.99), 3)))
        kw["top_k"] = rng.choice((None, None, rng.randint(1, 30)))
        if rng.random() < 0.25:
            kw["eps"] = rng.choice((0.0, 0.05, 0.2, 1e-4))

    cases, rejected = [], []
    for fn in ("diffusion_generate", "diffusion_generate_block"):
        use(plain_utils if fn == "diffusion_generate" else block_utils)
        for k in range(n):
            seed = rng.randrange(10 ** 6)
            alg = rng.choice(algs)
            kw = dict(alg=alg, alg_temp=0.0, temperature=0.0, mask_token_id=mask)
            am = None
            if fn == "diffusion_generate":
                max_new = rng.randint(1, 96 if WIDE["big"] else 32)
                if alg == "confidence_threshold":
                    divs = [d for d in range(1, max_new + 1) if max_new % d == 0]
                    steps = rng.choice(divs)
                    lens = [_plen(rng, 8)]
                else:
                    steps = rng.choice((rng.randint(1, max_new), max_new, rng.randint(1, _max_prompt())))
                    lens = [_plen(rng, 8) for _ in range(rng.choice((1, 1, 2, 3)))]
                kw.update(max_new_tokens=max_new, steps=steps, output_history=False, return_dict_in_generate=False)
                raw = _prompts(F, "dream", lens, seed, rng)
                width = max(lens)
                batch = [[pad] * (width - len(p)) + p for p in raw]
                if len(set(lens)) > 1:
                    am = [[0] * (width - len(p)) + [1] * len(p) for p in raw]
            else:
                block, nb = _blocks(rng)
                spb = rng.choice((rng.randint(2, max(2, block)), block, max(2, block // 2)))
                kw.update(max_new_tokens=block * nb, steps=spb * nb, block_length=block,
                          dual_cache=rng.random() < 0.5)
                bsz = 1 if alg == "confidence_threshold" else rng.choice((1, 1, 2))
                batch = _prompts(F, "dream", [_plen(rng, block)] * bsz, seed, rng)
            if alg == "confidence_threshold":
                kw["threshold"] = round(rng.uniform(0.3, 0.99), 3)
            filters(kw)
            counter.n = 0
            try:
                extra = {} if am is None else dict(attention_mask=torch.tensor(am))
                x = model.diffusion_generate(torch.tensor(batch), **kw, **extra)
            except Exception as e:  # noqa: BLE001
                rejected.append(dict(function=fn, kwargs=kw, prompts=batch, error=repr(e)[:300]))
                continue
            extra = {} if am is None else dict(attention_mask=am)
            cases.append(F._case(fn, kw, batch, x.tolist(), counter.n, [len(batch[0])] * len(batch), **extra))
    return cases, rejected


def fuzz_fast_dllm_v2(F, up: Path, rng: random.Random, n: int):
    import importlib
    import torch

    pkg = F._package_from_dir(up / "Fast_dLLM_v2_7B", "up_fast_dllm_v2")
    modeling = importlib.import_module(pkg + ".modeling")
    sys.path.insert(0, str(up / "Fast-dLLM" / "v2"))
    import generation_functions as gf

    model = F._load_strict(modeling.Fast_dLLM_QwenForCausalLM, F.OUT / "fast_dllm_v2")
    counter = F.Counter(model)
    mask, eos = F.sid("fast_dllm_v2", "<|MASK|>"), F.sid("fast_dllm_v2", "<|im_end|>")
    model.batch_sample = types.MethodType(gf.Fast_dLLM_QwenForCausalLM.batch_sample, model)
    tok = types.SimpleNamespace(pad_token_id=F.sid("fast_dllm_v2", "<|endoftext|>"))
    cases, rejected = [], []
    for fn in ("generate", "batch_sample"):
        for k in range(n):
            seed = rng.randrange(10 ** 6)
            other = (4, 16, 32) if WIDE["big"] else (4, 16)
            block = F.BD_SIZE if fn == "batch_sample" or rng.random() < 0.6 else rng.choice(other)
            sub = rng.choice([d for d in (1, 2, 4, 8, 16, 32) if d <= block and block % d == 0])
            th = rng.choice((1.0, round(rng.uniform(0.3, 0.99), 3)))
            stop = rng.choice((eos, -1))
            cache = rng.random() < 0.5
            max_new = rng.randint(block, 96 if WIDE["big"] else 40)
            counter.n = 0
            try:
                if fn == "generate":
                    plen = _plen(rng, block)
                    batch = _prompts(F, "fast_dllm_v2", [plen], seed, rng)
                    kw = dict(max_new_tokens=max_new, mask_id=mask, threshold=th, small_block_size=sub,
                              block_size=block, stop_token=stop, top_p=0.95, temperature=0, use_block_cache=cache)
                    out = model.generate(torch.tensor(batch), **kw)
                    cases.append(F._case(fn, kw, batch, out.tolist(), counter.n, [plen]))
                else:
                    lens = [_plen(rng, block) for _ in range(rng.choice((1, 2, 2, 3)))]
                    batch = _prompts(F, "fast_dllm_v2", lens, seed, rng)
                    ids = torch.tensor([p + [mask] * (max(lens) - len(p)) for p in batch])
                    kw = dict(block_size=block, max_new_tokens=max_new, small_block_size=sub, min_len=min(lens),
                              seq_len=lens, mask_id=mask, threshold=th, stop_token=stop, use_block_cache=cache,
                              top_p=0.95, temperature=0.0)
                    out = model.batch_sample(ids, tok, **dict(kw, seq_len=torch.tensor(lens)))
                    cases.append(F._case(fn, kw, batch, [out[b].tolist() for b in range(len(batch))], counter.n,
                                         lens, pad_token_id=tok.pad_token_id))
            except Exception as e:  # noqa: BLE001
                rejected.append(dict(function=fn, kwargs=kw, prompts=batch, error=repr(e)[:300]))
    return cases, rejected


def fuzz_sdar(F, up: Path, rng: random.Random, n: int):
    import torch

    gen, model = F.sdar_upstream(up)
    counter = F.Counter(model)
    mask = F.sid("sdar", "<|MASK|>")
    stops = [F.sid("sdar", "<|im_end|>"), F.sid("sdar", "<|endoftext|>")]
    cases, rejected = [], []
    for k in range(3 * n):
        seed = rng.randrange(10 ** 6)
        strategy = ("sequential", "low_confidence_static", "low_confidence_dynamic")[k % 3]
        block = rng.choice((1, 2, 4, 4, 8, 16) if WIDE["big"] else (1, 2, 4, 4, 8))
        steps = rng.choice((rng.randint(1, block), block, rng.randint(1, block + 4)))
        plen = _plen(rng, block)
        batch = _prompts(F, "sdar", [plen], seed, rng)
        kw = dict(mask_id=mask, gen_length=rng.randint(1, 96 if WIDE["big"] else 32), block_length=block,
                  denoising_steps=steps, temperature=1.0, top_k=0, top_p=1.0, remasking_strategy=strategy,
                  confidence_threshold=round(rng.uniform(0.2, 0.99), 3), stopping_criteria_idx=rng.choice((None, stops)))
        counter.n = 0
        try:
            x = gen.block_diffusion_generate(model, {"input_ids": torch.tensor(batch)}, **kw)
        except Exception as e:  # noqa: BLE001
            rejected.append(dict(function="block_diffusion_generate", kwargs=kw, prompts=batch, error=repr(e)[:300]))
            continue
        cases.append(F._case("block_diffusion_generate", kw, batch, x.tolist(), counter.n, [plen]))
    return cases, rejected


FUZZERS = {"llada": fuzz_llada, "dream": fuzz_dream, "fast_dllm_v2": fuzz_fast_dllm_v2, "sdar": fuzz_sdar}


def cmd_upstream(args) -> None:
    import torch

    import upstream_fixtures as F

    torch.manual_seed(0)
    torch.set_num_threads(1)
    rng = random.Random(f"fuzz-{args.family}-{args.seed}")
    WIDE.update(big=args.big, chat=args.chat)
    t0 = time.time()
    cases, rejected = FUZZERS[args.family](F, Path(args.upstream).resolve(), rng, args.n)
    doc = {"family": args.family, "seed": args.seed, "big": args.big, "chat": args.chat,
           "cases": [dict(id=f"fuzz-{args.family}-{k:03d}", **c) for k, c in enumerate(cases)], "rejected": rejected}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc) + "\n")
    print(f"{args.family}: {len(cases)} cases, {len(rejected)} rejected by upstream, {time.time() - t0:.0f}s")


# ----------------------------------------------------------------------------------- check
def cmd_check(args) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    import test_upstream_fidelity as T
    from dllm_trt.runtime.backends.torch_backend import TorchBackend

    doc = json.loads(Path(args.file).read_text())
    family = doc["family"]
    backend = TorchBackend.from_pretrained(str(T.FIXTURES / family))
    counts: dict = {}
    bad = []
    for c in doc["cases"]:
        fn = c["function"] + (":orig" if "cfg_scale" in c["kwargs"] else "")
        n = counts.setdefault(fn, {"cases": 0, "match": 0, "known": 0, "mismatch": 0})
        n["cases"] += 1
        gap = T.MAPPERS[family](c).gap
        try:
            T.check(backend, family, c)
            n["match"] += 1
        except Exception as e:  # noqa: BLE001
            kind = "known" if gap else "mismatch"
            n[kind] += 1
            msg = str(e).splitlines()[0] if isinstance(e, AssertionError) else traceback.format_exc(limit=2)
            if kind == "mismatch" or args.verbose:
                bad.append((c["id"], kind, gap, msg, c["function"], c["kwargs"], [len(p) for p in c["prompts"]]))
    for fn, n in counts.items():
        print(f"{family} {fn}: {n}")
    print(f"rejected by upstream: {len(doc.get('rejected', []))}")
    for b in bad:
        print(json.dumps(b))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("upstream")
    u.add_argument("--upstream", required=True)
    u.add_argument("--family", required=True, choices=sorted(FUZZERS))
    u.add_argument("--n", type=int, default=60, help="random settings per upstream function")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--out", required=True)
    u.add_argument("--big", action="store_true", help="prompts and generations up to 96 tokens, blocks up to 32")
    u.add_argument("--chat", action="store_true", help="half of the prompts with the family's special tokens mixed in")
    c = sub.add_parser("check")
    c.add_argument("file")
    c.add_argument("--verbose", action="store_true", help="also list the mismatches a documented gap explains")
    args = p.parse_args(argv)
    cmd_upstream(args) if args.cmd == "upstream" else cmd_check(args)


if __name__ == "__main__":
    main()
