"""The trained tiny checkpoints bundled in samples/checkpoints: present, small, complete, and
actually solving their tasks with the runtime's decode loop (torch backend, CPU).

These folders are part of the repository: a missing one FAILS (it is never skipped).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, cache_step_errors
from dllm_trt.config import ModelConfig
from dllm_trt.runtime import GenerationConfig, TextTokenizer, generate
from dllm_trt.tasks import EOS, MASK, exact_match, make_examples

CHECKPOINTS = {"llada-tiny": "llada", "dream-tiny": "dream", "bd-tiny": "block_diffusion"}
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "dllm_generation.json",
                  "README.md")
MAX_BYTES = 10 * 1024 * 1024
N_PROMPTS, EVAL_SEED = 200, 12345  # held out: training draws from seed 1
GEN_FIELDS = {f.name for f in dataclasses.fields(GenerationConfig)}


def checkpoint_dir(name: str) -> Path:
    d = REPO / "samples" / "checkpoints" / name
    if not d.is_dir():
        pytest.fail(f"bundled checkpoint {d} is missing: it is part of the repository "
                    f"(train it with samples/train_tiny.py and commit it)", pytrace=False)
    return d


def settings_of(d: Path) -> dict:
    raw = json.loads((d / "dllm_generation.json").read_text())  # dllm-trt's own decode settings
    return {k: v for k, v in raw.items() if k in GEN_FIELDS}


def decodings(family: str, settings: dict) -> dict[str, dict]:
    """One token per step (LLaDA low-confidence with steps = gen_length; threshold 1.0 for block
    diffusion, whose blocks are not scheduled) and the Fast-dLLM threshold 0.9 rule."""
    if family == "block_diffusion":
        one = dict(settings, strategy="threshold", threshold=1.0)
    else:
        one = dict(settings, strategy="low_confidence", steps=settings["gen_length"])
    return {"one": one, "fast": dict(settings, strategy="threshold", threshold=0.9)}


@pytest.fixture(scope="module")
def evaluated():
    """Factory: name -> {"one"/"fast": (exact match, tokens per forward, result)}, computed once."""
    from dllm_trt.runtime.backends.torch_backend import TorchBackend

    done: dict = {}

    def run(name: str):
        if name not in done:
            d = checkpoint_dir(name)
            backend = TorchBackend.from_pretrained(str(d))
            tok = TextTokenizer(d)
            exs = make_examples(N_PROMPTS, EVAL_SEED)
            prompts = [tok.encode(e.prompt) for e in exs]
            out = {}
            for key, s in decodings(backend.config.family, settings_of(d)).items():
                r = generate(backend, prompts, GenerationConfig(**s))
                out[key] = (exact_match([tok.decode(t) for t in r.tokens], exs), r.tokens_per_forward, r)
            done[name] = (backend, tok, out)
        return done[name]

    return run


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_checkpoint_folder_is_complete_and_small(name):
    d = checkpoint_dir(name)
    missing = [f for f in REQUIRED_FILES if not (d / f).is_file()]
    assert not missing, f"{d} lacks {', '.join(missing)}"
    size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    assert size <= MAX_BYTES, f"{d} is {size / 2**20:.1f} MiB, more than 10 MiB"
    assert not list(d.glob("*.bin")) and not list(d.glob("*.pt")), "pickle weights must not be bundled"
    config = ModelConfig.from_pretrained(d)
    assert config.family == CHECKPOINTS[name]
    # the tokenizer's special ids are the config's
    tok = TextTokenizer(d)
    assert tok.tok.token_to_id(MASK) == config.mask_token_id
    assert tok.tok.token_to_id(EOS) in config.eos_token_ids
    GenerationConfig(**settings_of(d)).resolved(config.attention)  # valid settings for this model
    assert (d / "README.md").read_text().strip(), "empty model card"


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_one_token_per_step_solves_the_tasks(name, evaluated):
    _, _, out = evaluated(name)
    acc, tpf, r = out["one"]
    assert acc >= 0.95, f"{name}: exact match {acc:.3f} with one token per step (want >= 0.95)"
    assert all(max(s.unmasked) <= 1 for s in r.steps), "not one token per step"
    assert tpf <= 1.0


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_threshold_decoding_is_parallel_and_as_accurate(name, evaluated):
    _, _, out = evaluated(name)
    acc_one, _, _ = out["one"]
    acc_fast, tpf, _ = out["fast"]
    assert tpf >= 2.0, f"{name}: threshold 0.9 decodes only {tpf:.2f} tokens per forward"
    # at most 1 point lost (2 prompts of 200)
    assert acc_fast >= acc_one - 0.01 - 1e-9, f"{name}: threshold 0.9 exact match {acc_fast:.3f} vs {acc_one:.3f}"


@pytest.mark.parametrize("name", ["llada-tiny", "dream-tiny"])
def test_prefix_and_dual_cache_are_close_on_trained_models(name, evaluated):
    """The bidirectional prefix / dual caches are APPROXIMATIONS (the prefix/suffix keys are from
    the block's first step): on the trained model the logits the loop reads (rows of still-masked
    positions) differ from the uncached ones at every later step (> 0), but little: probabilities
    move by less than 0.02, the argmax agrees, and the decoded answers are the same."""
    backend, tok, _ = evaluated(name)
    s = settings_of(checkpoint_dir(name))
    worst, agree = 0.0, []
    for e in make_examples(8, EVAL_SEED):
        prompt = tok.encode(e.prompt)
        ref = generate(backend, [prompt], GenerationConfig(**dict(s, cache="none", steps=s["gen_length"])))
        for cache in ("prefix", "dual"):
            gen = GenerationConfig(**dict(s, cache=cache, steps=s["gen_length"]))
            res, _, errors = cache_step_errors(backend, prompt, gen)
            later = [err for err in errors if err[0] == cache]
            assert later, f"no {cache} step"
            assert all(logit > 0 for _, logit, _, _ in later), f"{cache} cache gave exact logits: not approximate?"
            worst = max(worst, max(prob for _, _, prob, _ in later))
            agree += [a for _, _, _, a in later]
            assert res.tokens == ref.tokens, (cache, e.prompt)
    assert worst < 0.02, f"probabilities moved by up to {worst:.3f}"
    assert np.mean(agree) >= 0.99


@pytest.mark.parametrize("cache", ["none", "block"])
def test_block_diffusion_cache_modes_agree_on_trained_model(cache, evaluated):
    """bd-tiny's default sub_block cache, the exact block cache and no cache decode the same answers."""
    backend, tok, out = evaluated("bd-tiny")
    s = settings_of(checkpoint_dir("bd-tiny"))
    exs = make_examples(N_PROMPTS, EVAL_SEED)[:50]
    prompts = [tok.encode(e.prompt) for e in exs]
    r = generate(backend, prompts, GenerationConfig(**dict(s, strategy="threshold", threshold=0.9, cache=cache)))
    fast = out["fast"][2]
    same = np.mean([a == b for a, b in zip(r.tokens, fast.tokens[:50])])
    assert same >= 0.98, f"cache {cache}: {same:.2f} of the answers equal the sub_block cache's"


# ----------------------------------------------------------------------------- carry-tiny (issue 13)
CARRY = "carry-tiny"


@pytest.fixture(scope="module")
def carry():
    """(backend, tokenizer, settings, {task: (examples, prompt ids)}) of carry-tiny, 30 held-out prompts per task."""
    from dllm_trt.runtime.backends.torch_backend import TorchBackend

    d = checkpoint_dir(CARRY)
    backend, tok = TorchBackend.from_pretrained(str(d)), TextTokenizer(d)
    sets = {}
    for task in ("carry", "carry_chain"):
        exs = make_examples(30, EVAL_SEED, task)
        sets[task] = (exs, [tok.encode(e.prompt) for e in exs])
    return backend, tok, settings_of(d), sets


_CARRY_RUNS: dict = {}


def run_carry(carry, task: str, **kw):
    """(exact match, tokens per forward, result) of one decode setting on the task's prompts, computed once."""
    key = (task, tuple(sorted(kw.items())))
    if key not in _CARRY_RUNS:
        backend, tok, s, sets = carry
        exs, prompts = sets[task]
        r = generate(backend, prompts, GenerationConfig(**dict(s, **kw)))
        _CARRY_RUNS[key] = (exact_match([tok.decode(t) for t in r.tokens], exs), r.tokens_per_forward, r)
    return _CARRY_RUNS[key]


def test_carry_checkpoint_folder_is_complete_and_small():
    d = checkpoint_dir(CARRY)
    missing = [f for f in REQUIRED_FILES + ("train_metrics.json", "eval_metrics.json") if not (d / f).is_file()]
    assert not missing, f"{d} lacks {', '.join(missing)}"
    size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    assert size <= MAX_BYTES, f"{d} is {size / 2**20:.1f} MiB, more than 10 MiB"
    config = ModelConfig.from_pretrained(d)
    assert config.family == "llada"
    assert json.loads((d / "train_metrics.json").read_text())["task"] == "carry"
    s = settings_of(d)
    assert s["gen_length"] >= 34 and s["block_length"] == s["gen_length"]  # 33 digits + EOS, one block
    GenerationConfig(**s).resolved(config.attention)


def test_carry_one_token_per_step_solves_both_tasks(carry):
    for task in ("carry", "carry_chain"):
        acc, tpf, _ = run_carry(carry, task, strategy="low_confidence")
        assert acc >= 0.9 and tpf <= 1.0, f"{task}: exact match {acc:.3f} with one token per step"


def test_carry_chain_threshold_loses_accuracy_as_it_decodes_more(carry):
    """The point of the task: on long carry chains Fast-dLLM's threshold commits digits before the carry that
    settles them is decoded; the lower the threshold, the more tokens per forward and the lower the exact match.
    On the training distribution the same rule stays exact."""
    acc_one, _, _ = run_carry(carry, "carry_chain", strategy="low_confidence")
    points = [run_carry(carry, "carry_chain", strategy="threshold", threshold=t)[:2] for t in (0.999, 0.9, 0.5)]
    tpfs, accs = [p[1] for p in points], [p[0] for p in points]
    assert tpfs == sorted(tpfs) and tpfs[0] > 2.0, tpfs
    assert accs == sorted(accs, reverse=True) and accs[0] > accs[-1], accs
    assert accs[-1] <= acc_one - 0.3, (accs, acc_one)
    acc_in, tpf_in, _ = run_carry(carry, "carry", strategy="threshold", threshold=0.9)
    assert acc_in >= 0.95 and tpf_in > 10, (acc_in, tpf_in)


def test_carry_chain_freedave_keeps_one_token_per_step_accuracy_in_fewer_forwards(carry):
    """FreeDave's claim on the task: the one-token-per-step tokens exactly, in fewer forwards."""
    _, _, ref = run_carry(carry, "carry_chain", strategy="low_confidence")
    acc, tpf, got = run_carry(carry, "carry_chain", strategy="freedave", draft_steps=4)
    assert got.tokens == ref.tokens
    assert tpf > 1.8 and got.nfe < ref.nfe, (tpf, got.nfe, ref.nfe)


def test_carry_chain_hierarchy_decodes_more_per_forward_than_threshold_at_equal_accuracy(carry):
    """docs/decoding_methods.md's finding: at the same tau, dInfer's hierarchical rule adds each run of masks'
    best digit and keeps the threshold rule's accuracy, with more tokens per forward."""
    acc_t, tpf_t, _ = run_carry(carry, "carry_chain", strategy="threshold", threshold=0.9998)
    acc_h, tpf_h, _ = run_carry(carry, "carry_chain", strategy="hierarchy", threshold=0.9998, low_threshold=0.9)
    assert acc_h >= acc_t - 0.01 and acc_h >= 0.95, (acc_h, acc_t)
    assert tpf_h > 1.1 * tpf_t, (tpf_h, tpf_t)
