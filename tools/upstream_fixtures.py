"""Reference decodes from the upstream code, as JSON fixtures for tests/test_upstream_fidelity.py.

Two jobs, one file:

``build``  (any Python with torch + safetensors + tokenizers; no transformers)
    Writes a tiny random checkpoint per family under ``tests/fixtures/upstream/<family>/``:
    ``config.json`` with the upstream keys, ``model.safetensors`` with the upstream parameter
    names (bf16, about 230 KB), ``generation_config.json`` where the family ships one, and a
    byte-level BPE ``tokenizer.json`` (256 byte tokens + the family's special tokens, no merges).
    The weights are drawn by this script (seeded), not by upstream code, so they do not depend
    on any upstream initialiser. The LM head is sharpened so that confidences spread out (the
    threshold rules pick several tokens per step, but not all), the mask token's LM-head row is
    zeroed (a trained model never predicts [MASK]; this keeps upstream argmax off it), and the
    stop token's row is boosted so that it appears in some outputs and not in others.

``run``    (a separate venv with transformers; never the project environment)
    Imports the upstream modeling + generation code from ``--upstream DIR`` and runs every
    upstream generate function / algorithm on a grid of settings and prompts, writing
    ``tests/fixtures/upstream/<family>/cases.json``: per case the upstream function, its
    keyword arguments, the prompt ids, the full output ids, the generated ids and the number of
    model forwards (NFE: counted by wrapping the upstream model's ``forward``, i.e. every call
    upstream's own loop makes; LLaDA's functions also return their own ``nfe`` and both are
    stored).

``all``    build, then ``run`` each family in its own subprocess of ``--python``.

Upstream sources used for the committed fixtures (``--upstream`` layout; files read, never copied
into this repository):

  Fast-dLLM/        NVlabs/Fast-dLLM @ 5332e2f (2025-11-28, "fix bug"; read from the fork
                    Arya333/Fast-dLLM, whose history contains it unchanged):
                    llada/generate.py + llada/model/ (LLaDA: generate, generate_with_prefix_cache,
                    generate_with_dual_cache), dream/model/ (modeling_dream.py,
                    generation_utils.py = Dream's diffusion_generate with Fast-dLLM's added
                    ``confidence_threshold``; generation_utils_block.py = the prefix/dual cache
                    variant), v2/generation_functions.py (``batch_sample``, the eval harness).
  Fast_dLLM_v2_7B/  modeling.py + configuration.py of the Hugging Face checkpoint
                    Efficient-Large-Model/Fast_dLLM_v2_7B (``Fast_dLLM_QwenForCausalLM.generate``),
                    read from Satgoy152/DualDiffusion @ 189fa7a
                    FastDLLM-inferencing/Fast_dLLM_v2_7B/ (its copy adds an unused ``steps=None``
                    argument; with ``steps=None`` the loop is the checkpoint's).
  SDAR/             JetAstra/SDAR @ c2041a8: generate.py (``block_diffusion_generate``) and
                    training/model/SDAR-4B-Chat/ (modeling_sdar.py, configuration_sdar.py).
  LLaDA/            ML-GSAI/LLaDA @ b7e6c35: generate.py (the original ``generate``), run with
                    Fast-dLLM's llada/model (equal to the hub's for uncached forwards).

Environment that produced them: Python 3.11, torch 2.13.0+cpu, transformers 4.53.1 (the
version Fast-dLLM v2 pins; SDAR's config says 4.52.4), einops 0.8.2, in
``python -m venv --system-site-packages /work/upstream-venv``. Command::

    /work/upstream-venv/bin/pip install transformers==4.53.1 einops
    python tools/upstream_fixtures.py all --upstream /work/upstream-src --python /work/upstream-venv/bin/python

Substitutions (made by this script at import time, recorded in each cases.json ``notes``):

* SDAR's modeling imports flash_attn (``rms_norm_fn``, ``flash_attn_func``), which has no CPU
  build: a stub package with the same math in plain torch (RMSNorm in fp32; softmax attention
  without a mask) is put on ``sys.path``.
* SDAR's ``sample_with_temperature_topk_topp`` always draws with ``torch.multinomial``; for
  reproducible fixtures it is replaced by its greedy counterpart: the argmax token and its
  probability under the same temperature/top-k/top-p distribution. The remasking rules, step
  budgets and cache calls are upstream's.
* ML-GSAI/LLaDA generate.py hard-codes LLaDA-8B's ids for ``logits_eos_inf`` / ``confidence_eos_eot_inf``
  (126081 = ``<|endoftext|>``, config.json's eos_token_id; 126348 = ``<|eot_id|>``), which the tiny vocabulary
  does not have: the file's text is read, those two literals are replaced by the tiny tokenizer's ids (257,
  260) and it is executed as a module (``_llada_generate_tiny_ids``; nothing else changes).
* Dream's ``origin`` algorithm, ``alg_temp`` > 0, LLaDA's ``random`` remasking and every temperature > 0
  draw from torch's RNG and are not fixtured; neither is SDAR's ``entropy_bounded`` (its branch reads a
  ``transfer_index`` it never defines) nor Dream's block variant with an attention mask (upstream fails on
  the shapes).

Cases are only ever appended (``_llada_more`` and the like): a case keeps its id and its content when the
grid grows. Some prompts are chosen by a criterion the tool evaluates on upstream's own outputs (a prompt
whose tokens an option changes; one where torch's top-k tie order matters): the recorded tokens are always
upstream's.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "upstream"
FAMILIES = ("llada", "dream", "fast_dllm_v2", "sdar")
BYTES = 256  # token ids 0..255 are the byte-level BPE's byte tokens

# ----------------------------------------------------------------------------------------- specs
# Special tokens after the 256 byte tokens, in each family's order, and what config.json calls them.
SPECIALS = {
    "llada": ["<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
              "<|mdm_mask|>"],
    "dream": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>"],
    "fast_dllm_v2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|MASK|>"],
    "sdar": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|MASK|>"],
}
VOCAB = 320
HIDDEN, LAYERS, HEADS, KV_HEADS, MLP = 64, 2, 4, 2, 128
SDAR_HEAD_DIM = 32  # != HIDDEN / HEADS on purpose: head_dim must come from config.json
BD_SIZE = 8  # Fast-dLLM v2 bd_size
SDAR_BLOCK = 4  # SDAR config.json block_size (as SDAR-4B/8B-Chat)


def sid(family: str, name: str) -> int:
    return BYTES + SPECIALS[family].index(name)


def chatml_template() -> str:
    """Qwen's ChatML template (the shape Dream / Fast-dLLM v2 / SDAR ship), without tool calls."""
    return ("{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
            "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
            "{%- endif %}")


def llada_template() -> str:
    """LLaDA-8B-Instruct's template shape (Llama-3 headers, bos_token variable)."""
    return ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
            "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
            "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
            "{{ content }}{% endfor %}{% if add_generation_prompt %}"
            "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


def config_json(family: str) -> dict:
    if family == "llada":
        return {
            "architectures": ["LLaDAModelLM"], "model_type": "llada", "activation_type": "silu", "alibi": False,
            "alibi_bias_max": 8.0, "attention_dropout": 0.0, "attention_layer_norm": False,
            "attention_layer_norm_with_affine": True, "bias_for_layer_norm": False, "block_group_size": 1,
            "block_type": "llama", "d_model": HIDDEN, "embedding_dropout": 0.0, "embedding_size": VOCAB,
            "eos_token_id": sid(family, "<|endoftext|>"), "flash_attention": False, "include_bias": False,
            "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "cpu", "init_fn": "mitchell",
            "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True,
            "mask_token_id": sid(family, "<|mdm_mask|>"), "max_sequence_length": 256, "mlp_hidden_size": MLP,
            "mlp_ratio": 4, "multi_query_attention": None, "n_heads": HEADS, "n_kv_heads": KV_HEADS,
            "n_layers": LAYERS, "pad_token_id": sid(family, "<|endoftext|>"), "precision": "amp_bf16",
            "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True,
            "rope_theta": 500000.0, "scale_logits": False, "vocab_size": VOCAB, "weight_tying": False,
            "torch_dtype": "bfloat16",
        }
    common = {
        "hidden_act": "silu", "hidden_size": HIDDEN, "initializer_range": 0.02, "intermediate_size": MLP,
        "max_position_embeddings": 256, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000.0,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": False,
        "use_sliding_window": False, "vocab_size": VOCAB, "attention_dropout": 0.0,
    }
    if family == "dream":
        return {**common, "architectures": ["DreamModel"], "model_type": "Dream",
                "bos_token_id": sid(family, "<|beginoftext|>"), "eos_token_id": sid(family, "<|endoftext|>"),
                "pad_token_id": sid(family, "<|endoftext|>"), "mask_token_id": sid(family, "<|mask|>"),
                "max_window_layers": LAYERS, "sliding_window": 4096}
    if family == "fast_dllm_v2":
        return {**common, "architectures": ["Fast_dLLM_QwenForCausalLM"], "model_type": "Fast_dLLM_Qwen",
                "bd_size": BD_SIZE, "bos_token_id": sid(family, "<|endoftext|>"),
                "eos_token_id": sid(family, "<|im_end|>"), "pad_token_id": sid(family, "<|im_end|>"),
                "layer_types": ["full_attention"] * LAYERS, "max_window_layers": LAYERS, "use_cache": True,
                "conplemenrary_mask": True}
    if family == "sdar":
        return {**common, "architectures": ["SDARForCausalLM"], "model_type": "sdar", "attention_bias": False,
                "attn_implementation": "sdpa", "block_size": SDAR_BLOCK, "head_dim": SDAR_HEAD_DIM,
                "bos_token_id": sid(family, "<|endoftext|>"), "eos_token_id": sid(family, "<|endoftext|>"),
                "mask_token_id": sid(family, "<|MASK|>"), "max_window_layers": LAYERS, "debug": False,
                "fuse_cross_entropy": False, "micro_forward": False, "skip_checkpoint": False, "ep_size": 1,
                "use_deepep": False}
    raise ValueError(family)


def generation_config_json(family: str) -> dict | None:
    """What each family's checkpoint ships as generation_config.json (Hugging Face keys), tiny ids."""
    if family == "dream":  # Dream-v0-Instruct-7B
        return {"bos_token_id": sid(family, "<|beginoftext|>"), "eos_token_id": sid(family, "<|endoftext|>"),
                "pad_token_id": sid(family, "<|endoftext|>"), "alg": "entropy", "steps": 512, "alg_temp": 0.0,
                "temperature": 0.2, "top_p": 0.95, "max_new_tokens": 512}
    if family == "fast_dllm_v2":  # Fast_dLLM_v2_7B (Qwen2.5's)
        return {"bos_token_id": sid(family, "<|endoftext|>"),
                "eos_token_id": [sid(family, "<|im_end|>"), sid(family, "<|endoftext|>")],
                "pad_token_id": sid(family, "<|endoftext|>"), "do_sample": True, "repetition_penalty": 1.05,
                "temperature": 0.7, "top_k": 20, "top_p": 0.8}
    if family == "sdar":  # SDAR-4B-Chat
        return {"bos_token_id": sid(family, "<|endoftext|>"),
                "eos_token_id": [sid(family, "<|im_end|>"), sid(family, "<|endoftext|>")],
                "pad_token_id": sid(family, "<|endoftext|>"), "do_sample": True, "temperature": 0.6, "top_k": 20,
                "top_p": 0.95}
    return None


def tokenizer_config_json(family: str) -> dict:
    sp = SPECIALS[family]
    decoder = {str(BYTES + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                "single_word": False, "special": True} for i, t in enumerate(sp)}
    if family == "llada":
        return {"added_tokens_decoder": decoder, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>", "chat_template": llada_template(),
                "tokenizer_class": "PreTrainedTokenizerFast"}
    mask = sp[-1]
    eos = "<|im_end|>" if family == "fast_dllm_v2" else "<|endoftext|>"
    return {"added_tokens_decoder": decoder, "bos_token": None, "eos_token": eos, "pad_token": "<|endoftext|>",
            "mask_token": mask, "additional_special_tokens": [t for t in sp if t != "<|endoftext|>"],
            "chat_template": chatml_template(), "tokenizer_class": "Qwen2Tokenizer"}


def byte_level_tokenizer_json(specials: list[str]) -> str:
    """A byte-level BPE tokenizer.json: the 256 byte tokens (ids 0..255, GPT-2 byte alphabet),
    no merges, then the special tokens as added tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers import AddedToken

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # GPT-2's byte -> unicode map, so id i is byte i.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_to_char = {b: chr(c) for b, c in zip(bs, cs)}
    vocab = {byte_to_char[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok.to_str()


def state_dict(family: str, seed: int = 0):
    """Seeded random weights with the upstream names; see the module docstring for the shaping."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def lin(out_f: int, in_f: int, gain: float = 1.5):
        return torch.randn(out_f, in_f, generator=g) * (gain / in_f ** 0.5)

    def norm(n: int):
        return 1.0 + 0.2 * torch.randn(n, generator=g)

    sd: dict = {}
    if family == "llada":
        hd = HIDDEN // HEADS
        t = "model.transformer."
        sd[t + "wte.weight"] = torch.randn(VOCAB, HIDDEN, generator=g)
        for i in range(LAYERS):
            b = f"{t}blocks.{i}."
            sd[b + "q_proj.weight"] = lin(HEADS * hd, HIDDEN, 4.5)
            sd[b + "k_proj.weight"] = lin(KV_HEADS * hd, HIDDEN, 4.5)
            sd[b + "v_proj.weight"] = lin(KV_HEADS * hd, HIDDEN)
            sd[b + "attn_out.weight"] = lin(HIDDEN, HEADS * hd)
            sd[b + "ff_proj.weight"] = lin(MLP, HIDDEN)
            sd[b + "up_proj.weight"] = lin(MLP, HIDDEN)
            sd[b + "ff_out.weight"] = lin(HIDDEN, MLP)
            sd[b + "attn_norm.weight"] = norm(HIDDEN)
            sd[b + "ff_norm.weight"] = norm(HIDDEN)
        sd[t + "ln_f.weight"] = norm(HIDDEN)
        head = t + "ff_out.weight"
        sd[head] = lin(VOCAB, HIDDEN, 6.0)
        mask, stop = sid(family, "<|mdm_mask|>"), sid(family, "<|endoftext|>")
    else:
        hd = SDAR_HEAD_DIM if family == "sdar" else HIDDEN // HEADS
        bias = family != "sdar"
        sd["model.embed_tokens.weight"] = torch.randn(VOCAB, HIDDEN, generator=g)
        for i in range(LAYERS):
            b = f"model.layers.{i}."
            sd[b + "self_attn.q_proj.weight"] = lin(HEADS * hd, HIDDEN, 4.5)
            sd[b + "self_attn.k_proj.weight"] = lin(KV_HEADS * hd, HIDDEN, 4.5)
            sd[b + "self_attn.v_proj.weight"] = lin(KV_HEADS * hd, HIDDEN)
            if bias:
                sd[b + "self_attn.q_proj.bias"] = 0.3 * torch.randn(HEADS * hd, generator=g)
                sd[b + "self_attn.k_proj.bias"] = 0.3 * torch.randn(KV_HEADS * hd, generator=g)
                sd[b + "self_attn.v_proj.bias"] = 0.1 * torch.randn(KV_HEADS * hd, generator=g)
            sd[b + "self_attn.o_proj.weight"] = lin(HIDDEN, HEADS * hd)
            if family == "sdar":
                # q/k are RMS-normalised per head: large norm weights keep attention selective
                sd[b + "self_attn.q_norm.weight"] = 2.5 * norm(hd)
                sd[b + "self_attn.k_norm.weight"] = 2.5 * norm(hd)
            sd[b + "mlp.gate_proj.weight"] = lin(MLP, HIDDEN)
            sd[b + "mlp.up_proj.weight"] = lin(MLP, HIDDEN)
            sd[b + "mlp.down_proj.weight"] = lin(HIDDEN, MLP)
            sd[b + "input_layernorm.weight"] = norm(HIDDEN)
            sd[b + "post_attention_layernorm.weight"] = norm(HIDDEN)
        sd["model.norm.weight"] = norm(HIDDEN)
        head = "lm_head.weight"
        sd[head] = lin(VOCAB, HIDDEN, 6.0)
        mask = BYTES + len(SPECIALS[family]) - 1
        if family == "sdar":  # predictions are read in place: let the context, not [MASK]'s embedding, dominate
            sd["model.embed_tokens.weight"][mask] *= 0.2
        stop = sid(family, "<|im_end|>") if family == "fast_dllm_v2" else sid(family, "<|endoftext|>")
    sd[head][mask] = 0.0  # never the argmax: a trained model does not predict [MASK]
    sd[head][stop] *= 1.6  # the stop token wins somewhere, so stop handling is exercised
    # bf16 storage halves the size; the fixtures are computed from exactly these bf16 values.
    return {k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}


def cmd_build(args) -> None:
    from safetensors.torch import save_file

    for family in args.families:
        d = OUT / family
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(config_json(family), indent=2) + "\n")
        gc = generation_config_json(family)
        if gc is not None:
            (d / "generation_config.json").write_text(json.dumps(gc, indent=2) + "\n")
        (d / "tokenizer_config.json").write_text(json.dumps(tokenizer_config_json(family), indent=2) + "\n")
        (d / "tokenizer.json").write_text(byte_level_tokenizer_json(SPECIALS[family]))
        save_file(state_dict(family), str(d / "model.safetensors"), metadata={"format": "pt"})
        size = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
        print(f"{d}: {size / 1024:.0f} KB")


# ------------------------------------------------------------------------------- upstream runs
def prompts(family: str, lengths: list[int], seed: int) -> list[list[int]]:
    """Prompts of byte tokens (no specials), seeded."""
    import random

    rng = random.Random(f"{family}-{seed}")
    return [[rng.randrange(32, 127) for _ in range(n)] for n in lengths]


class Counter:
    """Counts forwards of the upstream model: a hook on its inner transformer (``model.model``),
    which every upstream loop reaches through ``__call__`` even where it calls ``self.forward``,
    and on the model itself (LLaDA's model calls its transformer's ``forward`` directly)."""

    def __init__(self, model):
        self.outer = self.inner = 0
        model.register_forward_pre_hook(lambda *_: self._hit("outer"))
        model.model.register_forward_pre_hook(lambda *_: self._hit("inner"))

    def _hit(self, which: str) -> None:
        setattr(self, which, getattr(self, which) + 1)

    @property
    def n(self) -> int:
        """Calls through ``model(...)`` reach both hooks, calls of ``self.forward`` only the inner one."""
        return max(self.outer, self.inner)

    @n.setter
    def n(self, value: int) -> None:
        self.outer = self.inner = value


def _load_strict(cls, path: Path, **kw):
    """Load with upstream's from_pretrained and check that every tensor of the file is a
    parameter of the model with the same name and value, and that no parameter is left out
    (a tied LM head is the embedding itself: upstream's tie_weights aliases it)."""
    import torch
    from safetensors.torch import load_file

    model = cls.from_pretrained(str(path), torch_dtype=torch.float32, **kw).eval()
    file_sd = load_file(str(path / "model.safetensors"))
    model_sd = {k: v for k, v in model.state_dict().items() if not k.endswith("inv_freq")}
    loaded = {model_sd[k].data_ptr() for k in file_sd if k in model_sd}
    missing = sorted(k for k in set(model_sd) - set(file_sd) if model_sd[k].data_ptr() not in loaded)
    unexpected = sorted(set(file_sd) - set(model_sd))
    if missing or unexpected:
        raise SystemExit(f"{path}: upstream {cls.__name__} names differ: missing {missing}, unexpected {unexpected}")
    for k, v in file_sd.items():
        if not torch.equal(model_sd[k], v.to(torch.float32)):
            raise SystemExit(f"{path}: {k} did not load unchanged into upstream {cls.__name__}")
    return model


def _case(fn: str, kwargs: dict, prompt_ids: list[list[int]], out_ids, nfe: int, gen_start: list[int], **extra):
    rows = [list(map(int, r)) for r in out_ids]
    return {"function": fn, "kwargs": kwargs, "prompts": prompt_ids, "output": rows,
            "generated": [r[s:] for r, s in zip(rows, gen_start)], "nfe": nfe, **extra}


def run_llada(up: Path) -> tuple[list, list]:
    import torch

    sys.path.insert(0, str(up / "Fast-dLLM" / "llada"))
    import generate as fd  # Fast-dLLM llada/generate.py
    from model.modeling_llada import LLaDAModelLM

    model = _load_strict(LLaDAModelLM, OUT / "llada")
    counter = Counter(model)
    mask = sid("llada", "<|mdm_mask|>")
    cases = []
    grid = []
    for fn in ("generate", "generate_with_prefix_cache", "generate_with_dual_cache"):
        for gen_length, block_length in ((16, 16), (24, 8)):
            blocks = gen_length // block_length
            for steps in (gen_length, gen_length // 2):
                if steps % blocks:
                    continue
                grid.append((fn, dict(steps=steps, gen_length=gen_length, block_length=block_length)))
            for th in (0.3, 0.6, 0.9):
                grid.append((fn, dict(steps=gen_length, gen_length=gen_length, block_length=block_length, threshold=th)))
            for factor in (0.5, 1.0):
                grid.append((fn, dict(steps=gen_length, gen_length=gen_length, block_length=block_length, factor=factor)))
    for bi, (fn, kw) in enumerate(grid):
        batch = prompts("llada", [7, 7] if bi % 3 == 0 else [5 + bi % 7], seed=bi)
        kw = dict(kw, temperature=0.0, remasking="low_confidence", mask_id=mask)
        counter.n = 0
        x, nfe = getattr(fd, fn)(model, torch.tensor(batch), **kw)
        cases.append(_case(fn, kw, batch, x.tolist(), counter.n, [len(p) for p in batch], returned_nfe=int(nfe),
                           source="Fast-dLLM llada/generate.py"))
    # The original LLaDA generate (ML-GSAI/LLaDA generate.py), same model class.
    sys.path.insert(0, str(up / "LLaDA"))
    import importlib.util

    spec = importlib.util.spec_from_file_location("llada_orig_generate", up / "LLaDA" / "generate.py")
    orig = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(orig)
    for bi, (gen_length, block_length, steps) in enumerate(((16, 16, 16), (16, 8, 8), (24, 8, 12))):
        batch = prompts("llada", [6, 6] if bi != 1 else [9], seed=100 + bi)
        kw = dict(steps=steps, gen_length=gen_length, block_length=block_length, temperature=0.0, cfg_scale=0.0,
                  remasking="low_confidence", mask_id=mask)
        counter.n = 0
        x = orig.generate(model, torch.tensor(batch), **kw)
        cases.append(_case("generate", kw, batch, x.tolist(), counter.n, [len(p) for p in batch],
                           source="LLaDA generate.py"))
    cases += _llada_more(up, model, counter, fd, mask)
    return cases, []


def _llada_generate_tiny_ids(up: Path, eos: int, eot: int):
    """ML-GSAI/LLaDA generate.py with its two hard-coded LLaDA-8B ids (126081 = <|endoftext|>, 126348 =
    <|eot_id|>, used by logits_eos_inf / confidence_eos_eot_inf) replaced by the tiny tokenizer's ids: the
    source is read, the literals are substituted and it is executed as a module (see NOTES["llada"])."""
    src = (up / "LLaDA" / "generate.py").read_text()
    if src.count("126081") != 2 or src.count("126348") != 1:
        raise SystemExit("LLaDA generate.py: expected 126081 twice and 126348 once (logits_eos_inf / "
                         "confidence_eos_eot_inf); the upstream file changed, check the substitution")
    src = src.replace("126081", str(eos)).replace("126348", str(eot))
    module = types.ModuleType("llada_orig_generate_tiny_ids")
    module.__file__ = str(up / "LLaDA" / "generate.py")
    exec(compile(src, module.__file__, "exec"), module.__dict__)
    return module


class _LowestIndexTies:
    """``torch`` for an upstream module, except that ``topk`` takes equal values lowest index first. Only a
    search criterion (which prompts make torch's own tie order matter); no recorded output comes from it."""

    def __init__(self, torch):
        self._torch = torch

    def __getattr__(self, name):
        return getattr(self._torch, name)

    def topk(self, values, k):
        order = sorted(range(values.numel()), key=lambda i: (-float(values[i]), i))[: int(k)]
        index = self._torch.tensor(order, dtype=self._torch.long)
        return values[index], index


def chat_like_prompt(family: str, n: int, seed: int) -> list[int]:
    """A prompt of byte tokens with the family's special tokens (not the mask) mixed in, seeded: the tiny
    model then proposes EOS / EOT at some positions, which byte-only prompts rarely make it do."""
    import random

    rng = random.Random(f"{family}-chat-{seed}")
    specials = [BYTES + i for i, t in enumerate(SPECIALS[family]) if "mask" not in t.lower()]
    return [rng.choice(specials) if rng.random() < 0.35 else rng.randrange(32, 127) for _ in range(n)]


def _llada_more(up: Path, model, counter, fd, mask: int) -> list:
    """Cases added after the first grid (appended, so the earlier ids keep their cases)."""
    import torch

    cases = []
    seed = 500
    # Fast-dLLM: threshold / factor with fewer steps than tokens (generate_with_dual_cache stops a block after
    # steps // blocks forwards and leaves its masks), an uneven schedule split, batches of two.
    for fn in ("generate", "generate_with_prefix_cache", "generate_with_dual_cache"):
        for gen_length, block_length, steps, rule in ((24, 8, 6, dict(threshold=0.9)), (16, 8, 4, dict(threshold=0.7)),
                                                      (24, 8, 6, dict(factor=0.5)), (16, 8, 2, dict(factor=1.0)),
                                                      (24, 8, 9, {}), (32, 16, 6, {})):
            batch = prompts("llada", [6, 6] if seed % 2 else [5 + seed % 6], seed=seed)
            kw = dict(steps=steps, gen_length=gen_length, block_length=block_length, **rule, temperature=0.0,
                      remasking="low_confidence", mask_id=mask)
            counter.n = 0
            x, nfe = getattr(fd, fn)(model, torch.tensor(batch), **kw)
            cases.append(_case(fn, kw, batch, x.tolist(), counter.n, [len(p) for p in batch], returned_nfe=int(nfe),
                               source="Fast-dLLM llada/generate.py"))
            seed += 1
    # ML-GSAI/LLaDA generate: logits_eos_inf / confidence_eos_eot_inf (ids substituted, see
    # _llada_generate_tiny_ids), classifier-free guidance, left-padded batches with an attention mask.
    eos, eot = sid("llada", "<|endoftext|>"), sid("llada", "<|eot_id|>")
    orig = _llada_generate_tiny_ids(up, eos, eot)
    pad = config_json("llada")["pad_token_id"]

    def run(batch, kw, attention_mask=None):
        counter.n = 0
        am = None if attention_mask is None else torch.tensor(attention_mask)
        x = orig.generate(model, torch.tensor(batch), attention_mask=am, **kw)
        return x.tolist(), counter.n

    base = dict(temperature=0.0, remasking="low_confidence", mask_id=mask)
    grid = ((16, 16, 16), (16, 8, 8), (24, 8, 12), (32, 8, 16))
    for options in (dict(logits_eos_inf=True), dict(confidence_eos_eot_inf=True),
                    dict(logits_eos_inf=True, confidence_eos_eot_inf=True)):
        for gi, (gen_length, block_length, steps) in enumerate(grid):
            kw = dict(steps=steps, gen_length=gen_length, block_length=block_length, cfg_scale=0.0, **base)
            # the first chat-like prompt (from this seed on) whose tokens the option changes, so that every case
            # exercises it (the option changes nothing where the model never proposes EOS / EOT)
            for _ in range(200):
                n = 5 + seed % 6
                batch = [chat_like_prompt("llada", n, seed)] + ([chat_like_prompt("llada", n, seed + 7919)] if gi % 2 else [])
                seed += 1
                out, nfe = run(batch, dict(kw, **options))
                if out != run(batch, kw)[0]:
                    break
            else:
                raise SystemExit(f"LLaDA {options}: no prompt in 200 whose tokens the option changes")
            cases.append(_case("generate", dict(kw, **options), batch, out, nfe, [len(p) for p in batch],
                               source="LLaDA generate.py (EOS / EOT ids substituted)"))
    # confidence_eos_eot_inf gives every EOS / EOT proposal confidence 0: which of those ties torch.topk takes
    # decides the tokens. The first two chat-like prompts (seeds from 1000) where torch's CPU tie order gives other
    # tokens than taking the lowest positions; the recorded tokens are upstream's own (the other order only
    # selects the prompts).
    kw = dict(steps=6, gen_length=24, block_length=8, cfg_scale=0.0, **base, confidence_eos_eot_inf=True)
    found = 0
    for tie_seed in range(1000, 2600):
        batch = [chat_like_prompt("llada", 5 + tie_seed % 6, tie_seed)]
        out, nfe = run(batch, kw)
        orig.torch = _LowestIndexTies(torch)
        try:
            other = run(batch, kw)[0]
        finally:
            orig.torch = torch
        if out != other:
            cases.append(_case("generate", kw, batch, out, nfe, [len(p) for p in batch],
                               source="LLaDA generate.py (EOS / EOT ids substituted)"))
            found += 1
            if found == 2:
                break
    else:
        raise SystemExit("LLaDA confidence_eos_eot_inf: fewer than 2 prompts where torch's tie order matters")
    for cfg_scale, (gen_length, block_length, steps), options in ((0.5, (16, 16, 16), {}), (2.0, (24, 8, 12), {}),
                                                                  (1.0, (16, 8, 8), dict(logits_eos_inf=True,
                                                                                         confidence_eos_eot_inf=True))):
        batch = [chat_like_prompt("llada", 7, seed), chat_like_prompt("llada", 7, seed + 7919)]
        seed += 1
        kw = dict(steps=steps, gen_length=gen_length, block_length=block_length, cfg_scale=cfg_scale, **base, **options)
        ones = [[1] * len(p) for p in batch]  # generate's cfg branch reads attention_mask_, set only with a mask
        out, nfe = run(batch, kw, ones)
        cases.append(_case("generate", kw, batch, out, nfe, [len(p) for p in batch], attention_mask=ones,
                           source="LLaDA generate.py (EOS / EOT ids substituted)"))
    for lens, (gen_length, block_length, steps), options in (([5, 9], (16, 8, 8), {}), ([9, 4], (24, 8, 12), {}),
                                                             ([6, 10], (16, 16, 16), dict(confidence_eos_eot_inf=True))):
        raw = prompts("llada", lens, seed=seed)
        seed += 1
        width = max(lens)
        batch = [[pad] * (width - len(p)) + p for p in raw]  # left padding, as LLaDA's main() pads
        am = [[0] * (width - len(p)) + [1] * len(p) for p in raw]
        kw = dict(steps=steps, gen_length=gen_length, block_length=block_length, cfg_scale=0.0, **base, **options)
        out, nfe = run(batch, kw, am)
        cases.append(_case("generate", kw, batch, out, nfe, [width] * len(batch), attention_mask=am,
                           source="LLaDA generate.py (EOS / EOT ids substituted)"))
    return cases


def run_dream(up: Path) -> tuple[list, list]:
    import torch

    sys.path.insert(0, str(up / "Fast-dLLM" / "dream"))
    from model.modeling_dream import DreamModel
    from model import generation_utils_block as block_utils

    model = _load_strict(DreamModel, OUT / "dream")
    counter = Counter(model)
    mask = sid("dream", "<|mask|>")
    cases = []
    i = 0
    for alg in ("entropy", "maskgit_plus", "topk_margin"):
        for max_new, steps in ((16, 16), (16, 8), (24, 6), (16, 3)):
            batch = prompts("dream", [6, 6] if i % 2 == 0 else [5 + i % 5], seed=i)
            kw = dict(max_new_tokens=max_new, steps=steps, alg=alg, alg_temp=0.0, temperature=0.0, top_p=None,
                      top_k=None, mask_token_id=mask, output_history=False, return_dict_in_generate=False)
            counter.n = 0
            x = model.diffusion_generate(torch.tensor(batch), **kw)
            cases.append(_case("diffusion_generate", kw, batch, x.tolist(), counter.n, [len(p) for p in batch],
                               source="Fast-dLLM dream/model/generation_utils.py"))
            i += 1
    for max_new, steps, th in ((16, 16, 0.9), (16, 4, 0.9), (16, 4, 0.5), (24, 8, 0.7), (16, 2, 0.99)):
        batch = prompts("dream", [5 + i % 5], seed=i)
        kw = dict(max_new_tokens=max_new, steps=steps, alg="confidence_threshold", threshold=th, temperature=0.0,
                  top_p=None, top_k=None, mask_token_id=mask)
        counter.n = 0
        x = model.diffusion_generate(torch.tensor(batch), **kw)
        cases.append(_case("diffusion_generate", kw, batch, x.tolist(), counter.n, [len(p) for p in batch],
                           source="Fast-dLLM dream/model/generation_utils.py"))
        i += 1
    # Fast-dLLM's prefix / dual cache variant (dream/model/generation_utils_block.py), bound as Fast-dLLM's
    # eval does: the block module's diffusion_generate/_sample replace the model's.
    model.diffusion_generate = types.MethodType(block_utils.DreamGenerationMixin.diffusion_generate, model)
    model._sample = types.MethodType(block_utils.DreamGenerationMixin._sample, model)
    for dual in (False, True):
        for alg, th in (("entropy", None), ("confidence_threshold", 0.9), ("confidence_threshold", 0.5)):
            for max_new, block, steps in ((16, 8, 16), (24, 8, 12), (16, 16, 8)):
                batch = prompts("dream", [6, 6] if (alg == "entropy" and not dual and i % 2 == 0) else [4 + i % 6], seed=i)
                kw = dict(max_new_tokens=max_new, steps=steps, alg=alg, alg_temp=0.0, temperature=0.0, top_p=None,
                          top_k=None, mask_token_id=mask, block_length=block, dual_cache=dual)
                if th is not None:
                    kw["threshold"] = th
                counter.n = 0
                x = model.diffusion_generate(torch.tensor(batch), **kw)
                cases.append(_case("diffusion_generate_block", kw, batch, x.tolist(), counter.n,
                                   [len(p) for p in batch], source="Fast-dLLM dream/model/generation_utils_block.py"))
                i += 1
    cases += _dream_more(model, counter, block_utils, mask)
    return cases, []


def _dream_more(model, counter, block_utils, mask: int) -> list:
    """Cases added after the first grid (appended, so the earlier ids keep their cases): top_p / top_k at
    temperature 0 (Dream's statistics are those of the filtered distribution), eps, more steps than tokens,
    left-padded batches with an attention mask, and the block variant's other algorithms."""
    import torch

    from model import generation_utils as plain_utils

    cases = []
    seed = 500
    pad = config_json("dream")["pad_token_id"]
    plain = dict(output_history=False, return_dict_in_generate=False)

    def use(utils) -> None:
        model.diffusion_generate = types.MethodType(utils.DreamGenerationMixin.diffusion_generate, model)
        model._sample = types.MethodType(utils.DreamGenerationMixin._sample, model)

    def run(fn, batch, kw, attention_mask=None, gen_start=None, **extra):
        counter.n = 0
        am = {} if attention_mask is None else dict(attention_mask=torch.tensor(attention_mask))
        x = model.diffusion_generate(torch.tensor(batch), **kw, **am)
        source = ("Fast-dLLM dream/model/generation_utils_block.py" if fn == "diffusion_generate_block" else
                  "Fast-dLLM dream/model/generation_utils.py")
        if attention_mask is not None:
            extra["attention_mask"] = attention_mask
        cases.append(_case(fn, kw, batch, x.tolist(), counter.n, gen_start or [len(p) for p in batch], source=source,
                           **extra))

    use(plain_utils)
    base = dict(alg_temp=0.0, temperature=0.0, mask_token_id=mask, **plain)
    for alg in ("entropy", "maskgit_plus", "topk_margin", "confidence_threshold"):
        for max_new, steps, top_p, top_k in ((16, 8, 0.9, None), (16, 16, None, 5), (24, 6, 0.5, 20), (16, 4, 0.99, 3)):
            if alg == "confidence_threshold" and max_new % steps:
                continue
            kw = dict(max_new_tokens=max_new, steps=steps, alg=alg, top_p=top_p, top_k=top_k, **base)
            if alg == "confidence_threshold":
                kw["threshold"] = 0.8
            run("diffusion_generate", prompts("dream", [6, 6] if seed % 2 and alg != "confidence_threshold" else
                                              [4 + seed % 6], seed=seed), kw)
            seed += 1
    for alg, max_new, steps, eps in (("entropy", 16, 8, 0.05), ("maskgit_plus", 24, 6, 0.2), ("topk_margin", 16, 5, 0.0),
                                     ("entropy", 16, 20, 1e-3), ("maskgit_plus", 8, 12, 1e-3)):
        kw = dict(max_new_tokens=max_new, steps=steps, alg=alg, top_p=None, top_k=None, eps=eps, **base)
        run("diffusion_generate", prompts("dream", [5 + seed % 5], seed=seed), kw)
        seed += 1
    # left padding with the attention mask (Dream's positions: cumsum(mask) - 1; pad keys masked)
    for alg, lens, max_new, steps in (("entropy", [5, 9], 16, 8), ("topk_margin", [10, 4], 16, 16),
                                      ("maskgit_plus", [6, 8, 3], 24, 6)):
        raw = prompts("dream", lens, seed=seed)
        seed += 1
        width = max(lens)
        batch = [[pad] * (width - len(p)) + p for p in raw]
        am = [[0] * (width - len(p)) + [1] * len(p) for p in raw]
        kw = dict(max_new_tokens=max_new, steps=steps, alg=alg, top_p=None, top_k=None, **base)
        run("diffusion_generate", batch, kw, attention_mask=am, gen_start=[width] * len(batch))
    # the block variant (prefix / dual cache): every alg but confidence_threshold ranks by entropy there;
    # top_p / top_k; eps; one step per block (the block's masks stay: docs/upstream_semantics.md row 11)
    use(block_utils)
    base = dict(alg_temp=0.0, temperature=0.0, mask_token_id=mask)
    for dual in (False, True):
        for alg, max_new, block, steps, extra in (("maskgit_plus", 16, 8, 16, {}), ("topk_margin", 24, 8, 12, {}),
                                                  ("entropy", 16, 8, 8, dict(top_p=0.9)),
                                                  ("confidence_threshold", 16, 8, 16, dict(top_k=5, threshold=0.7)),
                                                  ("maskgit_plus", 24, 8, 6, dict(eps=0.1)),
                                                  ("entropy", 16, 8, 2, {})):
            kw = dict(max_new_tokens=max_new, steps=steps, alg=alg, top_p=None, top_k=None, block_length=block,
                      dual_cache=dual, **base)
            kw.update(extra)
            run("diffusion_generate_block", prompts("dream", [4 + seed % 6], seed=seed), kw)
            seed += 1
    # found by tools/upstream_fuzz.py: the block variant's confidence_threshold ignores the steps (each block
    # runs until it has no mask), so steps per block need not divide the block
    for dual, max_new, block, steps in ((False, 16, 8, 6), (True, 32, 16, 10)):
        kw = dict(max_new_tokens=max_new, steps=steps, alg="confidence_threshold", threshold=0.8, top_p=None,
                  top_k=None, block_length=block, dual_cache=dual, **base)
        run("diffusion_generate_block", prompts("dream", [4 + seed % 6], seed=seed), kw)
        seed += 1
    use(plain_utils)
    return cases


def run_fast_dllm_v2(up: Path) -> tuple[list, list]:
    import importlib
    import torch

    pkg = _package_from_dir(up / "Fast_dLLM_v2_7B", "up_fast_dllm_v2")
    modeling = importlib.import_module(pkg + ".modeling")
    sys.path.insert(0, str(up / "Fast-dLLM" / "v2"))
    import generation_functions as gf

    model = _load_strict(modeling.Fast_dLLM_QwenForCausalLM, OUT / "fast_dllm_v2")
    counter = Counter(model)
    mask, eos = sid("fast_dllm_v2", "<|MASK|>"), sid("fast_dllm_v2", "<|im_end|>")
    cases = []
    i = 0
    for cache in (False, True):
        for th in (1.0, 0.9, 0.5):
            for sub in (2, 4, 8):
                for plen, max_new, stop in ((5, 16, eos), (11, 24, eos), (16, 16, -1), (13, 24, -1)):
                    if (i % 3) and th != 0.9 and sub == 4:
                        i += 1
                        continue
                    batch = prompts("fast_dllm_v2", [plen], seed=i)
                    kw = dict(max_new_tokens=max_new, mask_id=mask, threshold=th, small_block_size=sub,
                              block_size=BD_SIZE, stop_token=stop, top_p=0.95, temperature=0, use_block_cache=cache)
                    counter.n = 0
                    out = model.generate(torch.tensor(batch), **kw)
                    cases.append(_case("generate", kw, batch, out.tolist(), counter.n, [plen],
                                       source="Fast_dLLM_v2_7B modeling.py Fast_dLLM_QwenForCausalLM.generate"))
                    i += 1
    # The eval harness's batch_sample (v2/eval.py pads right with the mask id to the longest prompt).
    model.batch_sample = types.MethodType(gf.Fast_dLLM_QwenForCausalLM.batch_sample, model)
    tok = types.SimpleNamespace(pad_token_id=sid("fast_dllm_v2", "<|endoftext|>"))
    for cache in (False, True):
        for th in (0.9, 0.5):
            for sub in (4, 8):
                for lens, max_new, stop in (([6, 11], 16, eos), ([9, 19], 24, eos), ([5, 13], 16, -1)):
                    batch = prompts("fast_dllm_v2", lens, seed=i)
                    width = max(lens)
                    ids = torch.tensor([p + [mask] * (width - len(p)) for p in batch])
                    kw = dict(block_size=BD_SIZE, max_new_tokens=max_new, small_block_size=sub, min_len=min(lens),
                              seq_len=lens, mask_id=mask, threshold=th, stop_token=stop, use_block_cache=cache,
                              top_p=0.95, temperature=0.0)
                    counter.n = 0
                    out = model.batch_sample(ids, tok, **dict(kw, seq_len=torch.tensor(lens)))
                    rows = [out[b].tolist() for b in range(len(batch))]
                    cases.append(_case("batch_sample", kw, batch, rows, counter.n, lens,
                                       pad_token_id=tok.pad_token_id, source="Fast-dLLM v2/generation_functions.py"))
                    i += 1
    cases += _fast_dllm_v2_more(model, counter, tok, mask, eos)
    return cases, []


def _fast_dllm_v2_more(model, counter, tok, mask: int, eos: int) -> list:
    """Cases added after the first grid (appended, so the earlier ids keep their cases): max_new_tokens not a
    multiple of the block, prompts of 3 and of 24 tokens (three whole blocks), a block_size argument other than
    the checkpoint's bd_size, a prompt of exactly one block (upstream neither prefills nor attends it:
    docs/upstream_semantics.md row 5), and batch_sample with three rows and with equal lengths."""
    import torch

    cases = []
    seed = 500
    for plen, max_new, block, th, sub, cache, stop in ((5, 20, BD_SIZE, 0.9, 4, False, eos),
                                                       (11, 20, BD_SIZE, 0.5, 2, True, -1),
                                                       (3, 16, BD_SIZE, 0.9, 8, True, eos),
                                                       (24, 16, BD_SIZE, 0.7, 4, False, -1),
                                                       (24, 24, BD_SIZE, 0.9, 4, True, eos),
                                                       (6, 16, 4, 0.9, 2, False, -1), (10, 16, 4, 0.5, 4, True, eos),
                                                       (5, 32, 16, 0.9, 8, False, eos), (18, 32, 16, 0.7, 4, True, -1),
                                                       (BD_SIZE, 16, BD_SIZE, 0.9, 4, False, eos),
                                                       (BD_SIZE, 16, BD_SIZE, 1.0, 8, True, -1)):
        batch = prompts("fast_dllm_v2", [plen], seed=seed)
        seed += 1
        kw = dict(max_new_tokens=max_new, mask_id=mask, threshold=th, small_block_size=sub, block_size=block,
                  stop_token=stop, top_p=0.95, temperature=0, use_block_cache=cache)
        counter.n = 0
        out = model.generate(torch.tensor(batch), **kw)
        cases.append(_case("generate", kw, batch, out.tolist(), counter.n, [plen],
                           source="Fast_dLLM_v2_7B modeling.py Fast_dLLM_QwenForCausalLM.generate"))
    cases += _batch_sample_cases(model, counter, tok, mask, seed,
                                 (([4, 9, 17], 16, 0.9, 4, eos), ([7, 7], 16, 0.7, 8, -1),
                                  ([12, 3], 24, 0.5, 2, eos), ([4, 11, 20], 16, 0.9, 4, eos)))
    cases += _fast_dllm_v2_fuzz(model, counter, tok, mask, eos)
    return cases


def _batch_sample_cases(model, counter, tok, mask: int, seed: int, settings) -> list:
    """Fast-dLLM v2's batch_sample harness on prompts of the given lengths (right-padded with the mask, as the
    harness expects), one case per (lengths, max_new_tokens, threshold, small_block_size, stop_token); seeds
    count up from ``seed``."""
    import torch

    cases = []
    for lens, max_new, th, sub, stop in settings:
        batch = prompts("fast_dllm_v2", lens, seed=seed)
        seed += 1
        ids = torch.tensor([p + [mask] * (max(lens) - len(p)) for p in batch])
        kw = dict(block_size=BD_SIZE, max_new_tokens=max_new, small_block_size=sub, min_len=min(lens), seq_len=lens,
                  mask_id=mask, threshold=th, stop_token=stop, use_block_cache=False, top_p=0.95, temperature=0.0)
        counter.n = 0
        out = model.batch_sample(ids, tok, **dict(kw, seq_len=torch.tensor(lens)))
        cases.append(_case("batch_sample", kw, batch, [out[b].tolist() for b in range(len(batch))], counter.n, lens,
                           pad_token_id=tok.pad_token_id, source="Fast-dLLM v2/generation_functions.py"))
    return cases


def _fast_dllm_v2_fuzz(model, counter, tok, mask: int, eos: int) -> list:
    """Settings found by tools/upstream_fuzz.py (appended): batch_sample with a shortest prompt of exactly
    block_size tokens (no prefill: block 0 is never attended, docs/upstream_semantics.md row 5) and with a row
    whose prompt is a whole number of blocks, shorter than the longest (its first token is decoded by the
    block's diffusion, not taken from the previous block's commit: row 6)."""
    return _batch_sample_cases(model, counter, tok, mask, 700, (([8, 13], 16, 0.9, 4, -1), ([5, 8, 12], 16, 0.9, 4, -1),
                                                               ([9, 16, 27], 16, 0.7, 8, eos)))


FLASH_ATTN_STUB = {
    "flash_attn/__init__.py": '''
import torch
import torch.nn.functional as F


def flash_attn_func(q, k, v, causal=False, softmax_scale=None, **_):
    """[B, L, H, D] layout; grouped KV heads repeated; no mask (SDAR calls it only when all keys are visible)."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=softmax_scale)
    return out.transpose(1, 2)


def flash_attn_varlen_func(*a, **k):
    raise NotImplementedError("stub")
''',
    "flash_attn/bert_padding.py": '''
def index_first_axis(*a, **k):
    raise NotImplementedError("stub")


pad_input = unpad_input = index_first_axis
''',
    "flash_attn/ops/__init__.py": "",
    "flash_attn/ops/triton/__init__.py": "",
    "flash_attn/ops/triton/layer_norm.py": '''
import torch


def rms_norm_fn(x, weight, bias=None, eps=1e-6, **_):
    """RMSNorm in fp32, scaled by the weight, back in the input dtype (SDAR's commented-out reference)."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    out = weight * h.to(x.dtype)
    return out if bias is None else out + bias
''',
}


def _stub_flash_attn(root: Path) -> None:
    for rel, text in FLASH_ATTN_STUB.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    sys.path.insert(0, str(root))


_SCRATCH = Path(tempfile.mkdtemp(prefix="upstream-fixtures-"))


def _package_from_dir(src: Path, name: str) -> str:
    """Import a hub-style model folder (relative imports, no __init__) as package ``name``."""
    link = _SCRATCH / name
    if not link.exists():
        link.symlink_to(src.resolve(), target_is_directory=True)
    if str(_SCRATCH) not in sys.path:
        sys.path.insert(0, str(_SCRATCH))
    return name


def sdar_upstream(up: Path):
    """SDAR's generate.py module (sampler replaced by its greedy counterpart, see the docstring) and the
    upstream SDARForCausalLM on the tiny checkpoint."""
    import importlib
    import importlib.util
    import torch
    import torch.nn.functional as F

    _stub_flash_attn(_SCRATCH / "stubs")
    pkg = _package_from_dir(up / "SDAR" / "training" / "model" / "SDAR-4B-Chat", "up_sdar")
    modeling = importlib.import_module(pkg + ".modeling_sdar")
    spec = importlib.util.spec_from_file_location("sdar_generate", up / "SDAR" / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)

    def greedy(logits, temperature=1.0, top_k=0, top_p=1.0):
        """sample_with_temperature_topk_topp with the draw replaced by the argmax (see module docstring)."""
        shape = logits.shape[:-1]
        z = logits.reshape(-1, logits.shape[-1])
        if temperature != 1.0:
            z = z / temperature
        if top_k > 0:
            z = gen.top_k_logits(z, top_k)
        if top_p < 1.0:
            z = gen.top_p_logits(z, top_p)
        probs = F.softmax(z, dim=-1)
        token = probs.argmax(dim=-1, keepdim=True)
        return token.view(*shape), torch.gather(probs, -1, token).view(*shape)

    gen.sample_with_temperature_topk_topp = greedy
    return gen, _load_strict(modeling.SDARForCausalLM, OUT / "sdar")


def run_sdar(up: Path) -> tuple[list, list]:
    import torch

    gen, model = sdar_upstream(up)
    counter = Counter(model)
    mask = sid("sdar", "<|MASK|>")
    stops = [sid("sdar", "<|im_end|>"), sid("sdar", "<|endoftext|>")]
    cases = []
    i = 0
    for strategy in ("sequential", "low_confidence_static", "low_confidence_dynamic"):
        for steps in (4, 2, 1):
            for th in ((0.85, 0.5) if strategy == "low_confidence_dynamic" else (0.85,)):
                for plen, gen_len, stop in ((5, 12, None), (8, 16, stops), (10, 16, None), (3, 20, stops)):
                    batch = prompts("sdar", [plen], seed=i)
                    kw = dict(mask_id=mask, gen_length=gen_len, block_length=SDAR_BLOCK, denoising_steps=steps,
                              temperature=1.0, top_k=0, top_p=1.0, remasking_strategy=strategy,
                              confidence_threshold=th, stopping_criteria_idx=stop)
                    counter.n = 0
                    x = gen.block_diffusion_generate(model, {"input_ids": torch.tensor(batch)}, **kw)
                    cases.append(_case("block_diffusion_generate", kw, batch, x.tolist(), counter.n, [plen],
                                       source="SDAR generate.py (greedy sampler substitute)"))
                    i += 1
    # Added after the first grid (appended, so the earlier ids keep their cases): denoising_steps that do not
    # divide the block or exceed it, and a block_length other than config.json's block_size (the attention
    # mask, the prefill and the blocks all follow the argument).
    seed = 500
    for strategy in ("sequential", "low_confidence_static", "low_confidence_dynamic"):
        for block, steps, plen, gen_len, stop in ((SDAR_BLOCK, 3, 6, 12, None), (SDAR_BLOCK, 8, 9, 16, stops),
                                                  (2, 2, 5, 12, None), (2, 1, 8, 16, stops), (8, 8, 5, 16, None),
                                                  (8, 4, 11, 24, stops), (8, 3, 3, 16, None)):
            batch = prompts("sdar", [plen], seed=seed)
            seed += 1
            kw = dict(mask_id=mask, gen_length=gen_len, block_length=block, denoising_steps=steps, temperature=1.0,
                      top_k=0, top_p=1.0, remasking_strategy=strategy, confidence_threshold=0.85 if seed % 2 else 0.5,
                      stopping_criteria_idx=stop)
            counter.n = 0
            x = gen.block_diffusion_generate(model, {"input_ids": torch.tensor(batch)}, **kw)
            cases.append(_case("block_diffusion_generate", kw, batch, x.tolist(), counter.n, [plen],
                               source="SDAR generate.py (greedy sampler substitute)"))
    return cases, []


RUNNERS = {"llada": run_llada, "dream": run_dream, "fast_dllm_v2": run_fast_dllm_v2, "sdar": run_sdar}
NOTES = {
    "llada": "Fast-dLLM @5332e2f llada/generate.py and ML-GSAI/LLaDA @b7e6c35 generate.py; temperature 0. "
             "generate.py's hard-coded LLaDA-8B ids 126081 (<|endoftext|>) and 126348 (<|eot_id|>) of "
             "logits_eos_inf / confidence_eos_eot_inf are replaced by the tiny tokenizer's 257 / 260 when the "
             "file is loaded. The LLaDA model code (Fast-dLLM llada/model) ignores attention_mask "
             "(attn_mask=None), so a left-padded row decodes with its pads attended.",
    "dream": "Fast-dLLM @5332e2f dream/model generation_utils.py (Dream's diffusion_generate + confidence_threshold) "
             "and generation_utils_block.py (prefix/dual cache); temperature 0, alg_temp 0. Output rows are the "
             "full sequence padded to max_length; upstream never stops at EOS. Left-padded batches pass an "
             "attention_mask (the case's prompts are the padded rows).",
    "fast_dllm_v2": "Efficient-Large-Model/Fast_dLLM_v2_7B modeling.py generate (via DualDiffusion @189fa7a, steps=None) "
                    "and Fast-dLLM @5332e2f v2/generation_functions.py batch_sample; temperature 0. stop_token -1 = "
                    "no stop token.",
    "sdar": "JetAstra/SDAR @c2041a8 generate.py block_diffusion_generate and SDAR-4B-Chat modeling_sdar.py; "
            "flash_attn stubbed in plain torch; the multinomial draw replaced by argmax (token probability "
            "under the same temperature/top-k/top-p distribution).",
}


def cmd_run(args) -> None:
    import torch
    import transformers

    if len(args.families) > 1:  # each family in its own process: upstream folders share module names
        for family in args.families:
            subprocess.run([sys.executable, __file__, "run", "--upstream", args.upstream, "--families", family],
                           check=True)
        return
    torch.manual_seed(0)
    torch.set_num_threads(1)
    up = Path(args.upstream).resolve()
    for family in args.families:
        t0 = time.time()
        cases, _ = RUNNERS[family](up)
        doc = {
            "family": family,
            "notes": NOTES[family],
            "made_with": {"torch": torch.__version__, "transformers": transformers.__version__,
                          "python": sys.version.split()[0], "script": "tools/upstream_fixtures.py"},
            "cases": [dict(id=f"{family}-{k:03d}", **c) for k, c in enumerate(cases)],
        }
        (OUT / family / "cases.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n")
        print(f"{family}: {len(cases)} cases in {time.time() - t0:.1f}s")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("build", "run", "all"):
        s = sub.add_parser(name)
        s.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
        if name != "build":
            s.add_argument("--upstream", required=True, help="folder with the upstream checkouts (see docstring)")
        if name == "all":
            s.add_argument("--python", required=True, help="the venv's python (with transformers)")
    args = p.parse_args(argv)
    if args.cmd == "build":
        cmd_build(args)
    elif args.cmd == "run":
        cmd_run(args)
    else:
        cmd_build(args)
        subprocess.run([args.python, __file__, "run", "--upstream", args.upstream, "--families", *args.families],
                       check=True)


if __name__ == "__main__":
    main()
