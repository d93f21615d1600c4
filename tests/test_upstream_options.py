"""Settings added for upstream fidelity: LLaDA generate's ``logits_eos_inf`` / ``confidence_eos_eot_inf``
(ids from the model: config.json's EOS, the tokenizer's ``<|eot_id|>``), Dream's ``eps`` and its top-p /
top-k filtered statistics at temperature 0, the block-diffusion ``block_size``. Token equality with the
upstream code is tests/test_upstream_fidelity.py's job (fixture cases); here: where the ids come from, what
is refused, the command line, and the behaviour each option promises, on the tiny fixture checkpoints."""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil

import numpy as np
import pytest

from conftest import REPO
from dllm_trt.config import ModelConfig, tokenizer_special_id
from dllm_trt.errors import DllmError
from dllm_trt.runtime import GenerationConfig, generate
from dllm_trt.runtime.sampling import confidence_without, dream_probs, softmax64

FIXTURES = REPO / "tests" / "fixtures" / "upstream"
LLADA_EOS, LLADA_EOT = 257, 260  # the tiny LLaDA tokenizer's <|endoftext|> / <|eot_id|>


@pytest.fixture(scope="module")
def llada():
    from dllm_trt.runtime.backends.torch_backend import TorchBackend

    return TorchBackend.from_pretrained(str(FIXTURES / "llada"))


# ------------------------------------------------------------------------------------------ the ids
def test_eot_id_comes_from_the_tokenizer_and_survives_the_export_config(tmp_path):
    cfg = ModelConfig.from_pretrained(FIXTURES / "llada")
    assert (cfg.eos_token_ids[0], cfg.eot_token_id) == (LLADA_EOS, LLADA_EOT)
    assert "eot_token_id" not in json.loads((FIXTURES / "llada" / "config.json").read_text())
    again = ModelConfig.from_dict(cfg.to_hf_dict())  # what an export's dllm_config.json hf_config holds
    assert again.eot_token_id == LLADA_EOT and again == cfg
    # tokenizer.json alone (no tokenizer_config.json) names it too; a tokenizer without it gives None
    folder = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "llada", folder)
    (folder / "tokenizer_config.json").unlink()
    assert tokenizer_special_id(folder, "<|eot_id|>") == LLADA_EOT
    assert ModelConfig.from_pretrained(FIXTURES / "dream").eot_token_id is None


def test_an_eot_id_outside_the_vocabulary_is_refused():
    raw = json.loads((FIXTURES / "llada" / "config.json").read_text())
    with pytest.raises(DllmError, match="eot_token_id"):
        ModelConfig.from_dict(dict(raw, eot_token_id=10 ** 6))


# ------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize("bad, match", [
    (dict(logits_eos_inf=True, strategy="entropy"), "logits_eos_inf"),
    (dict(confidence_eos_eot_inf=True, strategy="hierarchy"), "confidence_eos_eot_inf"),
    (dict(eps=1.0), "eps"), (dict(eps=-0.1), "eps"), (dict(eps=float("nan")), "eps"),
    (dict(block_size=8), "block_size"),  # a bidirectional model has no block_size
])
def test_settings_that_do_not_apply_are_refused(bad, match):
    with pytest.raises(DllmError, match=match):
        GenerationConfig(gen_length=16, block_length=8, **bad).resolved("bidirectional")


def test_block_size_and_eos_options_on_block_diffusion():
    assert GenerationConfig(block_size=8).resolved("block_causal").block_size == 8
    for bad in (dict(block_size=0), dict(logits_eos_inf=True)):
        with pytest.raises(DllmError):
            GenerationConfig(**bad).resolved("block_causal")


def test_confidence_eos_eot_inf_needs_an_eot_token():
    from dllm_trt.runtime.backends.torch_backend import TorchBackend

    dream = TorchBackend.from_pretrained(str(FIXTURES / "dream"))  # ChatML: no <|eot_id|>
    with pytest.raises(DllmError, match="eot_id"):
        generate(dream, [[65, 66]], GenerationConfig(gen_length=8, block_length=8, confidence_eos_eot_inf=True))


def test_command_line_options_reach_the_generation_config():
    from dllm_trt.cli import add_decode_options
    from dllm_trt.runtime.settings import generation_config_from_args

    p = argparse.ArgumentParser()
    add_decode_options(p)
    args = p.parse_args(["--logits-eos-inf", "--confidence-eos-eot-inf", "--eps", "0.01"])
    g = generation_config_from_args(FIXTURES / "llada", args)
    assert (g.logits_eos_inf, g.confidence_eos_eot_inf, g.eps) == (True, True, 0.01)
    plain = generation_config_from_args(FIXTURES / "llada", p.parse_args([]))
    assert (plain.logits_eos_inf, plain.confidence_eos_eot_inf, plain.eps, plain.block_size) == (False, False, 1e-3, None)
    g = generation_config_from_args(FIXTURES / "sdar", p.parse_args(["--block-size", "8"]))
    assert g.block_size == 8


@pytest.mark.parametrize("family, argv, match", [
    ("llada", ["--block-size", "8"], "block.size"),
    ("llada", ["--eps", "0.1"], "--eps"),  # LLaDA's schedule has no eps
    ("dream", ["--eps", "1.5", "--strategy", "entropy"], "--eps"),
    ("sdar", ["--block-size", "0"], "--block-size"),
])
def test_command_line_refusals(family, argv, match):
    from dllm_trt.cli import add_decode_options
    from dllm_trt.options import check_decode_options
    from dllm_trt.runtime.settings import generation_config_from_args

    p = argparse.ArgumentParser()
    add_decode_options(p)
    args = p.parse_args(argv)
    config = ModelConfig.from_pretrained(FIXTURES / family)
    with pytest.raises(DllmError, match=match):
        check_decode_options(args, generation_config_from_args(FIXTURES / family, args), config, 8)


def test_dream_generation_config_eps_is_read(tmp_path):
    from dllm_trt.runtime.generation_files import dream_generation_keys

    assert dream_generation_keys({"alg": "entropy", "eps": 0.01}) == {"strategy": "entropy", "eps": 0.01}


# ------------------------------------------------------------------------------------------ behaviour
def _chat_like(seed: int, n: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(rng.choice([256, 257, 258, 259, 260])) if rng.random() < 0.35 else int(rng.integers(32, 127))
            for _ in range(n)]


def test_logits_eos_inf_never_proposes_eos(llada):
    """Prompts whose plain decode holds EOS decode without it (the ban is on the proposal, not a stop)."""
    g = GenerationConfig(gen_length=16, block_length=8, steps=8, stop_at_eos=False)
    prompts = [p for p in (_chat_like(s, 8) for s in range(60)) if LLADA_EOS in generate(llada, [p], g).tokens[0]]
    assert prompts, "no prompt of the tiny model proposes EOS"
    for p in prompts[:4]:
        banned = generate(llada, [p], dataclasses.replace(g, logits_eos_inf=True)).tokens[0]
        assert LLADA_EOS not in banned and len(banned) == 16


class _Recorder:
    """The backend, with every forward's input ids and returned logits rows kept."""

    def __init__(self, backend):
        self._backend, self.calls = backend, []

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def forward(self, input_ids, positions, bias, cache, past_len, write, rows, want_logits):
        out = self._backend.forward(input_ids, positions, bias, cache, past_len, write, rows, want_logits)
        self.calls.append((np.array(input_ids), np.array(rows), None if out.logits is None else np.array(out.logits)))
        return out


def test_confidence_eos_eot_inf_takes_eos_eot_proposals_last(llada):
    """One token per step: a step commits an EOS / EOT proposal only when every masked position of the block
    proposes EOS or EOT (their confidence is 0, any other proposal's is positive). Replayed from the forwards'
    own logits; and some prompt must commit one, else the test shows nothing."""
    mask, special = llada.config.mask_token_id, {LLADA_EOS, LLADA_EOT}
    committed_special = 0
    # the fixture's prompts for this option (chosen there because the option changes their tokens)
    cases = [c for c in json.loads((FIXTURES / "llada" / "cases.json").read_text())["cases"]
             if c["kwargs"].get("confidence_eos_eot_inf") and not c["kwargs"].get("cfg_scale")
             and "attention_mask" not in c]
    assert len(cases) >= 6
    for c in cases:
        kw = c["kwargs"]
        g = GenerationConfig(gen_length=kw["gen_length"], block_length=kw["block_length"], steps=kw["gen_length"],
                             stop_at_eos=False, confidence_eos_eot_inf=True)
        rec = _Recorder(llada)
        prompt = c["prompts"][0]
        final = generate(rec, [prompt], g).tokens[0]
        states = [c[0][0] for c in rec.calls] + [np.array(prompt + final)]
        for (ids, rows, logits), after in zip(rec.calls, states[1:]):
            z = logits[0].astype(np.float64)
            z[:, mask] = -np.inf
            proposal = dict(zip(rows[0].tolist(), z.argmax(-1).tolist()))  # position -> proposed token
            masked = [q for q in proposal if ids[0, q] == mask]
            taken = [q for q in masked if after[q] != mask]
            assert len(taken) == 1
            if proposal[taken[0]] in special:
                committed_special += 1
                assert all(proposal[q] in special for q in masked)
    assert committed_special, "no prompt made the tiny model commit EOS / EOT"
    rows = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]))
    conf = confidence_without(rows, np.array([0, 2]), 0.0, (2,))
    assert conf[0] == pytest.approx(0.7 / 0.9) and conf[1] == 0.0


def test_dream_statistics_are_those_of_the_filtered_distribution():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05], [0.97, 0.01, 0.01, 0.01]]))
    # top_p 0.7: row 0 keeps {0.5, 0.3} (the mass before 0.15 is 0.8 > 0.7), row 1 keeps its top token only
    p = dream_probs(logits, 0.0, top_p=0.7)
    assert p[0] == pytest.approx([0.625, 0.375, 0, 0]) and p[1] == pytest.approx([1, 0, 0, 0])
    p = dream_probs(logits, 0.0, top_k=3)
    assert p[0] == pytest.approx(np.array([0.5, 0.3, 0.15, 0]) / 0.95)
    assert dream_probs(logits, 0.0) == pytest.approx(softmax64(logits))


def test_dream_top_p_at_temperature_zero_changes_the_ranking_not_the_proposals():
    from dllm_trt.runtime.backends.torch_backend import TorchBackend

    dream = TorchBackend.from_pretrained(str(FIXTURES / "dream"))
    g = GenerationConfig(gen_length=16, block_length=16, steps=8, strategy="maskgit_plus", stop_at_eos=False)
    prompts = [[70 + i, 80, 90 - i, 100, 65 + 2 * i] for i in range(6)]
    plain = generate(dream, prompts, g).tokens
    nucleus = generate(dream, prompts, dataclasses.replace(g, top_p=0.5)).tokens
    assert plain != nucleus  # the order of filling changes, and with it later proposals
    assert generate(dream, prompts, dataclasses.replace(g, top_p=1.0)).tokens == plain


def test_block_size_changes_the_block_of_block_diffusion():
    from dllm_trt.runtime.backends.torch_backend import TorchBackend

    sdar = TorchBackend.from_pretrained(str(FIXTURES / "sdar"))
    g = GenerationConfig(gen_length=16, cache="block", sub_block_length=8, block_size=8, steps=8,
                         strategy="low_confidence", stop_at_eos=False)
    res = generate(sdar, [[70, 71, 72]], g)
    assert len(res.tokens[0]) == 16
    assert all(s.query_len == 8 for s in res.steps)  # one block of 8 per forward (the model's block is 4)
    own = generate(sdar, [[70, 71, 72]], dataclasses.replace(g, block_size=None, sub_block_length=4, steps=4))
    assert {s.query_len for s in own.steps} == {4}


def test_a_prompt_past_the_model_window_says_what_to_shorten():
    """--gen-length plus the prompt past max_position_embeddings: the fix named is the one that can work (a shorter
    --gen-length while the prompt fits, else a shorter prompt)."""
    from conftest import tiny_config
    from dllm_trt.options import check_decode_options

    cfg = tiny_config("llada")
    limit = cfg.max_position_embeddings
    args = argparse.Namespace(**{f: None for f in GenerationConfig.__dataclass_fields__})
    gen = GenerationConfig(gen_length=16, block_length=8)
    with pytest.raises(DllmError, match="use --gen-length 8 or less"):
        check_decode_options(args, gen, cfg, limit - 8)
    with pytest.raises(DllmError, match="use --gen-length 8 or less"):  # 12 would fit but is not whole blocks
        check_decode_options(args, gen, cfg, limit - 12)
    with pytest.raises(DllmError, match=f"shorten the prompt to at most {limit - 16} tokens"):
        check_decode_options(args, gen, cfg, limit + 5)
    check_decode_options(args, gen, cfg, limit - 16)  # fits exactly
