"""Checkpoint loading/saving with the upstream layouts, config round trips, cache exactness, errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import (FAMILIES, VARIANTS, RecordingBackend, build_tiny_model, cache_step_errors, rng_prompts,
                      tiny_config, tiny_config_dict)
from dllm_trt.config import ModelConfig
from dllm_trt.errors import DllmError
from dllm_trt.models import load_model, load_state_dict, save_model
from dllm_trt.runtime import GenerationConfig, generate

LLADA_BLOCK = ["q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out", "attn_norm", "ff_norm"]
QWEN2_LAYER = ["self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight", "self_attn.k_proj.bias",
               "self_attn.v_proj.weight", "self_attn.v_proj.bias", "self_attn.o_proj.weight", "mlp.gate_proj.weight",
               "mlp.up_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight",
               "post_attention_layernorm.weight"]
# Qwen3 (SDAR): no q/k/v bias, per-head q_norm / k_norm.
QWEN3_LAYER = [n for n in QWEN2_LAYER if not n.endswith(".bias")] + ["self_attn.q_norm.weight", "self_attn.k_norm.weight"]


def upstream_names(variant: str, layers: int, tie: bool) -> set[str]:
    """The tensor names of the upstream checkpoints (LLaDA-8B / Dream-7B / Fast-dLLM v2, SDAR)."""
    if variant == "llada":
        names = {"model.transformer.wte.weight", "model.transformer.ln_f.weight"}
        if not tie:
            names.add("model.transformer.ff_out.weight")
        for i in range(layers):
            names |= {f"model.transformer.blocks.{i}.{n}.weight" for n in LLADA_BLOCK}
        return names
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not tie:
        names.add("lm_head.weight")
    layer = QWEN3_LAYER if variant == "sdar" else QWEN2_LAYER  # SDAR is built on Qwen3
    for i in range(layers):
        names |= {f"model.layers.{i}.{n}" for n in layer}
    return names


def random_inputs(config: ModelConfig, length: int = 12, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, length), generator=g)
    pos = torch.arange(length)[None].expand(batch, length)
    return ids, pos, torch.zeros(batch, 1, length, length)


def safetensors_keys(path: Path) -> dict[str, tuple]:
    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_round_trip(variant, tie, tmp_path, tokenizer_json):
    model = build_tiny_model(variant, seed=3, tie=tie)
    save_model(model, tmp_path / "m", extra_files={"tokenizer.json": tokenizer_json, "blob.bin": b"\x00\x01"})
    assert (tmp_path / "m" / "tokenizer.json").read_text() == tokenizer_json
    assert (tmp_path / "m" / "blob.bin").read_bytes() == b"\x00\x01"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp folder left behind"

    loaded, config = load_model(tmp_path / "m")
    assert config == model.config
    assert not loaded.training
    a, b = model.state_dict(), loaded.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype == torch.float32
        assert torch.equal(a[k], b[k]), k
    ids, pos, bias = random_inputs(config)
    with torch.no_grad():
        la, pa = model(ids, pos, bias)
        lb, pb = loaded(ids, pos, bias)
    assert la.shape == (2, 12, config.vocab_size)
    assert torch.equal(la, lb)
    assert len(pa) == config.num_layers and pa[0][0].shape == (2, config.num_kv_heads, 12, config.head_dim)
    # the safetensors holds exactly the upstream names
    keys = safetensors_keys(tmp_path / "m" / "model.safetensors")
    assert set(keys) == upstream_names(variant, config.num_layers, tie)


def test_llada_upstream_names_and_shapes(tiny_checkpoint):
    keys = safetensors_keys(tiny_checkpoint("llada") / "model.safetensors")
    c = tiny_config("llada")
    h, hd = c.hidden_size, c.head_dim
    assert keys["model.transformer.wte.weight"] == (c.embedding_size, h)  # padded embedding (48 > 42)
    assert keys["model.transformer.ff_out.weight"] == (c.embedding_size, h)
    assert keys["model.transformer.ln_f.weight"] == (h,)
    assert keys["model.transformer.blocks.0.q_proj.weight"] == (c.num_heads * hd, h)
    assert keys["model.transformer.blocks.1.k_proj.weight"] == (c.num_kv_heads * hd, h)
    assert keys["model.transformer.blocks.0.attn_out.weight"] == (h, c.num_heads * hd)
    assert keys["model.transformer.blocks.0.ff_proj.weight"] == (c.intermediate_size, h)
    assert keys["model.transformer.blocks.0.ff_out.weight"] == (h, c.intermediate_size)
    assert c.embedding_size > c.vocab_size
    model, _ = load_model(tiny_checkpoint("llada"))
    ids, pos, bias = random_inputs(c)
    with torch.no_grad():
        logits, _ = model(ids, pos, bias)
    assert logits.shape[-1] == c.vocab_size  # padded rows of the head are cut


@pytest.mark.parametrize("variant", ["dream", "block_diffusion"])
def test_qwen2_upstream_names_and_shapes(variant, tiny_checkpoint):
    keys = safetensors_keys(tiny_checkpoint(variant) / "model.safetensors")
    c = tiny_config(variant)
    h, hd = c.hidden_size, c.head_dim
    assert keys["model.layers.0.self_attn.q_proj.weight"] == (c.num_heads * hd, h)
    assert keys["model.layers.0.self_attn.q_proj.bias"] == (c.num_heads * hd,)
    assert keys["model.layers.1.self_attn.k_proj.bias"] == (c.num_kv_heads * hd,)
    assert keys["model.layers.0.mlp.gate_proj.weight"] == (c.intermediate_size, h)
    assert keys["model.layers.0.mlp.down_proj.weight"] == (h, c.intermediate_size)
    assert keys["lm_head.weight"] == (c.vocab_size, h)
    assert keys["model.norm.weight"] == (h,)
    assert keys["model.embed_tokens.weight"] == (c.vocab_size, h)


def test_llada_qkv_bias_names(tmp_path):
    raw = dict(tiny_config_dict("llada"), include_qkv_bias=True)
    from dllm_trt.models import build_model

    model = build_model(ModelConfig.from_dict(raw))
    save_model(model, tmp_path / "m")
    keys = safetensors_keys(tmp_path / "m" / "model.safetensors")
    assert {"model.transformer.blocks.0.q_proj.bias", "model.transformer.blocks.0.k_proj.bias",
            "model.transformer.blocks.0.v_proj.bias"} <= set(keys)
    assert "model.transformer.blocks.0.attn_out.bias" not in keys
    _, config = load_model(tmp_path / "m")
    assert config.qkv_bias


def test_load_dtype(tiny_checkpoint):
    m32, c = load_model(tiny_checkpoint("dream"))
    m16, _ = load_model(tiny_checkpoint("dream"), dtype="bf16")
    assert all(p.dtype == torch.bfloat16 for p in m16.parameters())
    ids, pos, bias = random_inputs(c)
    with torch.no_grad():
        a, _ = m32(ids, pos, bias)
        b, _ = m16(ids, pos, bias)
    assert b.dtype == torch.bfloat16
    assert (a - b.float()).abs().mean() < 0.1 * a.abs().mean()  # bf16 rounding, not a different model
    with pytest.raises(DllmError, match="fp8"):
        load_model(tiny_checkpoint("dream"), dtype="fp8")


# ----------------------------------------------------------------------------- architecture
def reference_forward(state: dict, c: ModelConfig, ids: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The upstream architecture written out from the checkpoint's tensor names, in float64,
    one head at a time: RMSNorm, rotate-half RoPE, grouped-query attention (query head h reads
    KV head h // groups), SwiGLU (LLaDA: ff_proj is the SiLU side), tied or separate LM head."""
    sd = {k: v.double() for k, v in state.items()}
    D, H, Hkv = c.head_dim, c.num_heads, c.num_kv_heads
    if c.family == "llada":
        pre, emb = "model.transformer.", "model.transformer.wte.weight"
        layer = lambda i: f"model.transformer.blocks.{i}."  # noqa: E731
        names = dict(q="q_proj", k="k_proj", v="v_proj", o="attn_out", n1="attn_norm", n2="ff_norm",
                     gate="ff_proj", up="up_proj", down="ff_out")
        final, head = pre + "ln_f.weight", emb if c.tie_word_embeddings else pre + "ff_out.weight"
    else:
        emb = "model.embed_tokens.weight"
        layer = lambda i: f"model.layers.{i}."  # noqa: E731
        names = dict(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
                     n1="input_layernorm", n2="post_attention_layernorm", gate="mlp.gate_proj", up="mlp.up_proj",
                     down="mlp.down_proj")
        final, head = "model.norm.weight", emb if c.tie_word_embeddings else "lm_head.weight"

    def norm(x, w):
        return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + c.rms_norm_eps)

    def lin(x, name):
        y = x @ sd[name + ".weight"].T
        return y + sd[name + ".bias"] if name + ".bias" in sd else y

    L = ids.shape[1]
    pos = torch.arange(L, dtype=torch.float64)
    inv = c.rope_theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = pos[:, None] * inv[None]  # [L, D/2]

    def rope(x):  # x [L, D]: pairs (j, j + D/2) rotated by ang[:, j]
        a, b = x[:, : D // 2], x[:, D // 2:]
        return torch.cat([a * ang.cos() - b * ang.sin(), b * ang.cos() + a * ang.sin()], dim=-1)

    out = []
    for bi in range(ids.shape[0]):
        h = sd[emb][ids[bi]]
        for i in range(c.num_layers):
            p = layer(i)
            x = norm(h, sd[p + names["n1"] + ".weight"])
            q, k, v = lin(x, p + names["q"]), lin(x, p + names["k"]), lin(x, p + names["v"])
            heads = []
            for hh in range(H):
                g = hh // (H // Hkv)
                qh, kh, vh = rope(q[:, hh * D:(hh + 1) * D]), rope(k[:, g * D:(g + 1) * D]), v[:, g * D:(g + 1) * D]
                att = torch.softmax(qh @ kh.T / D ** 0.5 + bias[bi, 0].double(), dim=-1)
                heads.append(att @ vh)
            h = h + torch.cat(heads, dim=-1) @ sd[p + names["o"] + ".weight"].T
            x = norm(h, sd[p + names["n2"] + ".weight"])
            gate, up = x @ sd[p + names["gate"] + ".weight"].T, x @ sd[p + names["up"] + ".weight"].T
            mlp = torch.nn.functional.silu(gate) * up
            h = h + mlp @ sd[p + names["down"] + ".weight"].T
        out.append(norm(h, sd[final]) @ sd[head].T)
    return torch.stack(out)[..., : c.vocab_size]


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("variant", ["llada", "dream", "block_diffusion"])
def test_forward_matches_reference_architecture(variant, tie, tmp_path):
    model = build_tiny_model(variant, seed=7, tie=tie)
    save_model(model, tmp_path / "m")
    state = load_state_dict(tmp_path / "m")
    c = model.config
    ids, pos, _ = random_inputs(c, length=10)
    if c.block_size:
        bias = block_causal_bias(pos[0], pos[0], 4).expand(2, 1, 10, 10).clone()
        c = c.replace(block_size=4)
    else:  # sequence 1 has two padding keys at the end
        bias = torch.zeros(2, 1, 10, 10)
        bias[1, :, :, 8:] = -1e9
    with torch.no_grad():
        got, presents = model(ids, pos, bias)
    want = reference_forward(state, c, ids, bias)
    torch.testing.assert_close(got.double(), want, atol=2e-4, rtol=2e-4)
    # the returned keys are post-RoPE (what a cache must hold): position 0 is unrotated
    x0 = model.model.embed_tokens(ids[:, :1]) if c.family != "llada" else model.model.transformer.wte(ids[:, :1])
    layer0 = model.layers[0]
    norm = layer0.attn_norm if c.family == "llada" else layer0.input_layernorm
    k_proj = layer0.k_proj if c.family == "llada" else layer0.self_attn.k_proj
    with torch.no_grad():
        k0 = k_proj(norm(x0)).view(2, 1, c.num_kv_heads, c.head_dim).transpose(1, 2)
    torch.testing.assert_close(presents[0][0][:, :, :1], k0)


# ----------------------------------------------------------------------------- ModelConfig
@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("variant", VARIANTS)
def test_config_round_trip(variant, tie, tmp_path):
    cfg = tiny_config(variant, tie=tie)
    raw = cfg.to_hf_dict()
    assert ModelConfig.from_dict(raw) == cfg
    assert raw["model_type"] == cfg.model_type  # upstream spelling kept
    assert raw["torch_dtype"] == "float32"  # keys it does not interpret survive
    cfg.save(tmp_path)
    assert ModelConfig.from_pretrained(tmp_path) == cfg
    if variant == "llada":
        assert {"d_model", "n_heads", "n_layers", "mlp_hidden_size", "max_sequence_length"} <= set(raw)
    else:
        assert {"hidden_size", "num_attention_heads", "num_hidden_layers", "max_position_embeddings"} <= set(raw)


def test_config_round_trip_other_fields():
    # head_dim is read by the Qwen2/3 block-diffusion models (Dream's attention ignores it: see test_config_keys)
    raw = dict(tiny_config_dict("block_diffusion"), eos_token_id=[0, 7], head_dim=16, num_key_value_heads=1,
               rope_theta=5e5)
    cfg = ModelConfig.from_dict(raw)
    assert cfg.eos_token_ids == (0, 7) and cfg.head_dim == 16 and cfg.num_kv_heads == 1
    assert ModelConfig.from_dict(cfg.to_hf_dict()) == cfg
    raw = dict(tiny_config_dict("block_diffusion"), bd_size=16)
    cfg = ModelConfig.from_dict(raw)
    assert cfg.block_size == 16 and ModelConfig.from_dict(cfg.to_hf_dict()).block_size == 16


def test_config_families():
    expect = {"llada": ("llada", False, "bidirectional", None), "dream": ("dream", True, "bidirectional", None),
              "block_diffusion": ("block_diffusion", True, "block_causal", 8),
              "sdar": ("block_diffusion", False, "block_causal", 8)}
    for variant, (family, shift, attention, bs) in expect.items():
        c = tiny_config(variant)
        assert (c.family, c.logits_shift, c.attention, c.block_size) == (family, shift, attention, bs), variant
        assert c.mask_token_id == 1 and c.eos_token_ids == (0,)


# ----------------------------------------------------------------------------- sharded checkpoints
def _shard(src: Path, dst: Path, with_index: bool) -> list[str]:
    state = load_file(str(src / "model.safetensors"))
    names = sorted(state)
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    parts = [names[::2], names[1::2]]
    for fname, part in zip(files, parts):
        save_file({k: state[k] for k in part}, str(dst / fname), metadata={"format": "pt"})
    if with_index:
        weight_map = {k: files[i] for i, part in enumerate(parts) for k in part}
        (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return files


@pytest.mark.parametrize("with_index", [True, False])
@pytest.mark.parametrize("variant", FAMILIES)
def test_sharded_checkpoint_loads(variant, with_index, tiny_checkpoint, tmp_path):
    src = tiny_checkpoint(variant)
    _shard(src, tmp_path / "sharded", with_index)
    ref, config = load_model(src)
    model, config2 = load_model(tmp_path / "sharded")
    assert config2 == config
    a, b = ref.state_dict(), model.state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_index_naming_a_missing_shard(tiny_checkpoint, tmp_path):
    files = _shard(tiny_checkpoint("dream"), tmp_path / "sharded", with_index=True)
    (tmp_path / "sharded" / files[1]).unlink()
    with pytest.raises(DllmError, match=files[1]):
        load_model(tmp_path / "sharded")


# ----------------------------------------------------------------------------- cached vs uncached forward
def block_causal_bias(q_pos: torch.Tensor, k_pos: torch.Tensor, bs: int) -> torch.Tensor:
    """Built here, independently of runtime/layout.py: key visible when its block is not after the query's."""
    allowed = (k_pos[None, :] // bs) <= (q_pos[:, None] // bs)
    return torch.where(allowed, 0.0, -1e9)[None, None]


@pytest.mark.parametrize("variant", ["block_diffusion", "sdar"])
def test_block_causal_block_cache_is_exact(variant, tiny_checkpoint):
    """(a) Under block-causal attention a finished block's keys/values do not depend on later
    blocks, so prefilling blocks 0..k-1 and forwarding block k over them equals the full forward."""
    model, c = load_model(tiny_checkpoint(variant))
    bs, n_blocks = c.block_size, 4
    T = bs * n_blocks
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, c.vocab_size, (1, T), generator=g)
    ids[0, T - bs + 3:] = c.mask_token_id  # a partly masked last block
    pos = torch.arange(T)
    with torch.no_grad():
        full, _ = model(ids, pos[None], block_causal_bias(pos, pos, bs))
        for k in range(1, n_blocks):
            P = k * bs
            _, past = model(ids[:, :P], pos[None, :P], block_causal_bias(pos[:P], pos[:P], bs))
            q = pos[P:P + bs]
            bias = block_causal_bias(q, pos[:P + bs], bs)
            logits, _ = model(ids[:, P:P + bs], q[None], bias, past)
            torch.testing.assert_close(logits, full[:, P:P + bs], atol=1e-5, rtol=0)
        # Negative control: with bidirectional attention the same prefix cache is NOT exact.
        zeros = torch.zeros(1, 1, T, T)
        bidir, _ = model(ids, pos[None], zeros)
        _, past = model(ids[:, :bs], pos[None, :bs], torch.zeros(1, 1, bs, bs))
        approx, _ = model(ids[:, bs:], pos[None, bs:], torch.zeros(1, 1, T - bs, T), past)
        assert (approx - bidir[:, bs:]).abs().max() > 1e-3


def test_block_cache_exact_through_the_backend(tiny_backend):
    """The same through TorchBackend's cache: writes at the masked positions, the whole cache as the
    past (P = capacity), the positions not written yet masked by the bias."""
    be = tiny_backend("block_diffusion")
    c = be.config
    bs, T = c.block_size, 3 * c.block_size
    rng = np.random.default_rng(2)
    ids = rng.integers(2, c.vocab_size, (2, T)).astype(np.int64)
    pos = np.broadcast_to(np.arange(T), (2, T)).copy()
    full_bias = block_causal_bias(torch.arange(T), torch.arange(T), bs).numpy().repeat(2, axis=0)
    every = np.broadcast_to(np.arange(T), (2, T)).copy()
    full = be.forward(ids, pos, full_bias, None, 0, None, every, want_logits=True)
    cache = be.allocate_cache(2, T + 4)
    cap = cache.capacity
    write = np.ones((2, 2 * bs), bool)
    be.forward(ids[:, :2 * bs], pos[:, :2 * bs], full_bias[:, :, :2 * bs, :2 * bs], cache, 0, write, every[:, :1])
    q = torch.arange(2 * bs, T)
    past = block_causal_bias(q, torch.arange(cap), bs).numpy()
    past[..., 2 * bs:] = -1e9  # cache positions not written yet
    bias = np.concatenate([past, block_causal_bias(q, q, bs).numpy()], axis=-1).repeat(2, axis=0)
    rows = every[:, :bs][:, ::-1].copy()  # rows read in another order
    out = be.forward(ids[:, 2 * bs:], pos[:, 2 * bs:], bias, cache, cap, None, rows, want_logits=True)
    want = np.take_along_axis(full.logits[:, 2 * bs:], rows[..., None], axis=1)
    np.testing.assert_allclose(out.logits, want, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(out.tokens, np.take_along_axis(full.tokens[:, 2 * bs:], rows, axis=1))
    np.testing.assert_allclose(out.confidence, np.take_along_axis(full.confidence[:, 2 * bs:], rows, axis=1),
                               atol=1e-5)
    # positions never written stay zero; the write mask is honoured per sequence
    assert float(cache[0][0][:, :, 2 * bs:].abs().max()) == 0.0
    cache2 = be.allocate_cache(2, T)
    write = np.zeros((2, bs), bool)
    write[1, 2:5] = True
    be.forward(ids[:, :bs], pos[:, :bs], full_bias[:, :, :bs, :bs], cache2, 0, write, every[:, :1])
    k0 = cache2[0][0]
    assert float(k0[0].abs().max()) == 0.0
    written = (k0[1].abs().sum(dim=(0, 2)) > 0).nonzero().flatten().tolist()
    assert written == [2, 3, 4]
    # a past shorter than the cache is refused: the whole cache is the past
    with pytest.raises(DllmError, match="must be 0 or the cache capacity"):
        be.forward(ids[:, 2 * bs:], pos[:, 2 * bs:], bias[..., cap - 2 * bs:], cache, 2 * bs, None, rows)


@pytest.mark.parametrize("variant", ["llada", "dream"])
def test_prefix_and_dual_cache_first_step_is_exact(variant, tiny_backend):
    """(b) The first step of every block is a full forward: the prefix/dual runs' first forward
    equals the uncached run's, and every block's first step equals an uncached forward of the
    sequence the loop holds at that moment."""
    be = tiny_backend(variant, sharpen=4.0)
    prompt = rng_prompts(1, 9, 9, seed=5)[0]
    base = dict(gen_length=16, block_length=8, steps=16, stop_at_eos=False)
    ref = RecordingBackend(be)
    r_none = generate(ref, [prompt], GenerationConfig(cache="none", **base))
    for cache in ("prefix", "dual"):
        res, calls, errors = cache_step_errors(be, prompt, GenerationConfig(cache=cache, **base))
        assert [s.kind for s in res.steps] == (["full"] + [cache] * 7) * 2
        assert np.array_equal(calls[0][3], ref.calls[0][3])  # bit-identical first forward
        assert res.steps[0].unmasked == r_none.steps[0].unmasked == [1]
        # the first step decoded the same token at the same position: the second forward's inputs agree
        ids, pos = calls[1][0][0], calls[1][1][0]
        assert np.array_equal(ids, ref.calls[1][0][0][pos])
        assert (ref.calls[1][0][0] != be.config.mask_token_id).sum() == len(prompt) + 1
        for kind, err, _, _ in errors:
            if kind == "full":  # every block's first step
                assert err <= 1e-5, (cache, err)


@pytest.mark.parametrize("variant", ["llada", "dream"])
def test_prefix_and_dual_cache_later_steps_are_approximate(variant, tiny_backend):
    """(c) Later steps of a block reuse keys/values computed at the block's first step, while
    the bidirectional model's prefix (and, for dual, suffix) states depend on the tokens decoded
    since: the logits are an APPROXIMATION of the uncached ones, never equal. The difference is
    measured here on a random model (> 0 at every later step); test_fixtures.py checks that it
    is small on the trained checkpoints (same decoded answers)."""
    be = tiny_backend(variant, sharpen=4.0)
    prompt = rng_prompts(1, 9, 9, seed=5)[0]
    for cache in ("prefix", "dual"):
        gen = GenerationConfig(gen_length=16, block_length=8, steps=16, cache=cache, stop_at_eos=False)
        _, _, errors = cache_step_errors(be, prompt, gen)
        later = [err for kind, err, _, _ in errors if kind == cache]
        assert len(later) == 14
        assert all(err > 1e-6 for err in later), (cache, later)  # really an approximation
        assert all(np.isfinite(later))


# ----------------------------------------------------------------------------- errors
def test_error_missing_folder(tmp_path):
    with pytest.raises(DllmError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_error_missing_config_json(tiny_checkpoint, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_checkpoint("llada"), d)
    (d / "config.json").unlink()
    with pytest.raises(DllmError, match="config.json") as e:
        load_model(d)
    assert str(d) in str(e.value)


def test_error_config_not_json(tiny_checkpoint, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_checkpoint("llada"), d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(DllmError, match="not valid JSON"):
        load_model(d)


def test_error_missing_safetensors_and_pickle_hint(tiny_checkpoint, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_checkpoint("dream"), d)
    (d / "model.safetensors").unlink()
    with pytest.raises(DllmError, match=r"no \*\.safetensors") as e:
        load_model(d)
    assert str(d) in str(e.value) and "pickle" not in str(e.value)
    (d / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(DllmError, match="pickle") as e:
        load_model(d)
    assert "pytorch_model.bin" in str(e.value) and "safetensors" in str(e.value)


@pytest.mark.parametrize("model_type", ["gpt2", "", "LLaMA"])
def test_error_unknown_model_type(model_type, tiny_checkpoint, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_checkpoint("dream"), d)
    raw = json.loads((d / "config.json").read_text())
    raw["model_type"] = model_type
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(DllmError, match="unknown model_type") as e:
        load_model(d)
    assert repr(model_type) in str(e.value) and "config.json" in str(e.value)


def test_error_missing_config_key():
    raw = tiny_config_dict("llada")
    del raw["n_layers"]
    with pytest.raises(DllmError, match="n_layers"):
        ModelConfig.from_dict(raw)


def _rewrite(d: Path, edit) -> None:
    state = load_file(str(d / "model.safetensors"))
    edit(state)
    save_file(state, str(d / "model.safetensors"))


@pytest.mark.parametrize("variant,name", [("llada", "model.transformer.blocks.1.q_proj.weight"),
                                          ("dream", "model.layers.0.self_attn.k_proj.bias")])
def test_error_wrong_shape_names_the_tensor(variant, name, tiny_checkpoint, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_checkpoint(variant), d)
    _rewrite(d, lambda s: s.__setitem__(name, torch.zeros(*[n + 1 for n in s[name].shape])))
    with pytest.raises(DllmError, match="shape") as e:
        load_model(d)
    assert name in str(e.value)


@pytest.mark.parametrize("variant,name", [("llada", "model.transformer.ln_f.weight"),
                                          ("block_diffusion", "lm_head.weight")])
def test_error_missing_tensor_names_it(variant, name, tiny_checkpoint, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_checkpoint(variant), d)
    _rewrite(d, lambda s: s.pop(name))
    with pytest.raises(DllmError, match="lacks") as e:
        load_model(d)
    assert name in str(e.value)


def test_error_unexpected_tensor_names_it(tiny_checkpoint, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_checkpoint("dream"), d)
    _rewrite(d, lambda s: s.__setitem__("model.layers.9.mlp.up_proj.weight", torch.zeros(2, 2)))
    with pytest.raises(DllmError, match="model.layers.9.mlp.up_proj.weight"):
        load_model(d)


def test_load_state_dict_matches_file(tiny_checkpoint):
    d = tiny_checkpoint("llada")
    state = load_state_dict(d)
    assert set(state) == set(safetensors_keys(d / "model.safetensors"))


@pytest.mark.parametrize("variant", FAMILIES)
def test_error_prompt_plus_gen_length_too_long(variant, tiny_backend):
    be = tiny_backend(variant)
    limit = be.config.max_position_embeddings
    prompt = [5] * (limit - 15)
    with pytest.raises(DllmError, match="maximum") as e:
        generate(be, [[5, 6], prompt], GenerationConfig(gen_length=16, block_length=8))
    assert str(limit) in str(e.value) and str(limit + 1) in str(e.value)
    # one position less fits
    generate(be, [prompt[1:]], GenerationConfig(gen_length=16, block_length=8, strategy="threshold", threshold=0.0))


@pytest.mark.parametrize("variant", ["llada", "dream"])
def test_error_gen_length_not_divisible_by_block_length(variant, tiny_backend):
    with pytest.raises(DllmError, match="not divisible") as e:
        generate(tiny_backend(variant), [[5, 6, 7]], GenerationConfig(gen_length=20, block_length=8))
    assert "20" in str(e.value) and "8" in str(e.value)


def test_error_bad_generation_settings(tiny_backend):
    be = tiny_backend("llada")
    with pytest.raises(DllmError, match="block"):
        generate(be, [[5]], GenerationConfig(gen_length=8, block_length=8, cache="block"))
    with pytest.raises(DllmError, match="steps"):
        generate(be, [[5]], GenerationConfig(gen_length=16, block_length=8, steps=3))
    with pytest.raises(DllmError, match="strategy"):
        generate(be, [[5]], GenerationConfig(gen_length=8, block_length=8, strategy="greedy"))
    with pytest.raises(DllmError, match="prompt"):
        generate(be, [[5], []], GenerationConfig(gen_length=8, block_length=8))
    with pytest.raises(DllmError, match="sub_block_length"):
        generate(tiny_backend("block_diffusion"), [[5]], GenerationConfig(gen_length=8, sub_block_length=3))
