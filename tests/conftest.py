"""Shared fixtures: tiny random checkpoints of every family, written with the upstream layout.

Families (``variant`` argument of the factories):

  llada            LLaDA layout, bidirectional, logits read in place
  dream            Dream (Qwen2 layout), bidirectional, shifted logits
  block_diffusion  Fast-dLLM v2 (``Fast_dLLM_Qwen``, Qwen2 layout), block-causal, shifted logits
  sdar             SDAR (Qwen3 layout: per-head q_norm/k_norm, no q/k/v bias, head_dim from
                   config.json; block ``block_size``), block-causal, logits read in place

The configs use the same upstream keys as ``samples/train_tiny.py`` (tiny_config) and the
task tokenizer of ``dllm_trt.tasks`` (vocabulary 42, 0 = EOS, 1 = mask).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dllm_trt.config import ModelConfig  # noqa: E402
from dllm_trt.runtime import GenerationConfig, generate  # noqa: E402
from dllm_trt.tasks import build_tokenizer_json  # noqa: E402

# The models here are tiny: one intra-op thread is as fast, and on a busy 2-core CI runner much
# faster (OpenMP workers spin-waiting for a core). DLLM_TEST_TORCH_THREADS overrides it.
try:
    import torch

    torch.set_num_threads(int(os.environ.get("DLLM_TEST_TORCH_THREADS", "1")))
except ImportError:  # the runtime tests that need no torch can still run
    pass

FAMILIES = ("llada", "dream", "block_diffusion")
VARIANTS = FAMILIES + ("sdar",)
EOS_ID, MASK_ID = 0, 1
VOCAB = 42  # the task tokenizer's vocabulary
TINY_BD_SIZE = 8


def tiny_config_dict(variant: str, *, vocab: int = VOCAB, hidden: int = 32, layers: int = 2, heads: int = 4,
                     kv_heads: int = 2, mlp: int = 64, max_positions: int = 128, bd_size: int = TINY_BD_SIZE,
                     tie: bool = False) -> dict:
    """An upstream ``config.json`` dict (the keys of samples/train_tiny.py tiny_config)."""
    if variant == "llada":
        raw = {"model_type": "llada", "d_model": hidden, "n_heads": heads, "n_kv_heads": kv_heads,
               "n_layers": layers, "mlp_hidden_size": mlp, "vocab_size": vocab, "embedding_size": vocab + 6,
               "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "weight_tying": tie, "mask_token_id": MASK_ID,
               "eos_token_id": EOS_ID, "pad_token_id": EOS_ID, "max_sequence_length": max_positions}
    else:
        model_type = {"dream": "Dream", "block_diffusion": "Fast_dLLM_Qwen", "sdar": "sdar"}[variant]
        raw = {"model_type": model_type, "hidden_size": hidden, "num_attention_heads": heads,
               "num_key_value_heads": kv_heads, "num_hidden_layers": layers, "intermediate_size": mlp,
               "vocab_size": vocab, "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": tie,
               "mask_token_id": MASK_ID, "eos_token_id": EOS_ID, "pad_token_id": EOS_ID,
               "max_position_embeddings": max_positions}
        if variant == "block_diffusion":
            raw["bd_size"] = bd_size
        if variant == "sdar":  # SDAR's config.json keys (Qwen3): block_size, head_dim, attention_bias
            raw.update(block_size=bd_size, head_dim=hidden // heads, attention_bias=False)
    raw["torch_dtype"] = "float32"
    return raw


def tiny_config(variant: str, **overrides) -> ModelConfig:
    return ModelConfig.from_dict(tiny_config_dict(variant, **overrides))


def build_tiny_model(variant: str, seed: int = 0, sharpen: float = 1.0, **overrides):
    """A random fp32 model in eval mode, seeded.

    torch's default init makes every masked position predict the same token (the embeddings
    dominate the residual stream and attention is near uniform), so the weights are redrawn
    with a larger gain and sharper attention: outputs then depend on position and context.
    ``sharpen`` scales the LM head so that predictions are confident enough for the parallel
    rules (threshold / factor) to pick several tokens per step.
    """
    import torch

    from dllm_trt.models import build_model

    torch.manual_seed(seed)
    model = build_model(tiny_config(variant, **overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and not name.endswith(("wte.weight", "embed_tokens.weight")):
                p.normal_(0.0, 1.5 / p.shape[1] ** 0.5)
                if name.endswith(("q_proj.weight", "k_proj.weight")):
                    p.mul_(3.0)
        lm_head_weight(model).mul_(sharpen)
    return model.eval()


def lm_head_weight(model):
    """The LM head matrix of either layout (the embedding when tied)."""
    c = model.config
    if c.family == "llada":
        t = model.model.transformer
        return t.wte.weight if c.tie_word_embeddings else t.ff_out.weight
    return model.model.embed_tokens.weight if c.tie_word_embeddings else model.lm_head.weight


@pytest.fixture(scope="session")
def tokenizer_json() -> str:
    return build_tokenizer_json()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tokenizer_json):
    """Factory ``tiny_checkpoint(variant, seed=0, sharpen=1.0, **config_overrides) -> Path``.

    Saves a random tiny model with ``save_model`` (config.json + model.safetensors + tokenizer.json)
    into a session temp folder; the same arguments return the same folder.
    """
    from dllm_trt.models import save_model

    made: dict = {}

    def make(variant: str, seed: int = 0, sharpen: float = 1.0, **overrides) -> Path:
        key = (variant, seed, sharpen, tuple(sorted(overrides.items())))
        if key not in made:
            model = build_tiny_model(variant, seed=seed, sharpen=sharpen, **overrides)
            name = f"{variant}-s{seed}-x{sharpen:g}-{len(made)}"
            path = tmp_path_factory.mktemp("ckpt") / name
            save_model(model, path, extra_files={"tokenizer.json": tokenizer_json})
            made[key] = path
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_backend(tiny_checkpoint):
    """Factory ``tiny_backend(variant, seed=0, sharpen=1.0, **config_overrides) -> TorchBackend``,
    loaded from the saved checkpoint folder (so it exercises load_model)."""
    from dllm_trt.runtime.backends.torch_backend import TorchBackend

    made: dict = {}

    def make(variant: str, seed: int = 0, sharpen: float = 1.0, **overrides):
        key = (variant, seed, sharpen, tuple(sorted(overrides.items())))
        if key not in made:
            made[key] = TorchBackend.from_pretrained(str(tiny_checkpoint(variant, seed, sharpen, **overrides)))
        return made[key]

    return make


@pytest.fixture(scope="session")
def task_tokenizer(tmp_path_factory, tokenizer_json):
    from dllm_trt.runtime import TextTokenizer

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    path.write_text(tokenizer_json)
    return TextTokenizer(path)


@pytest.fixture(scope="session")
def task_prompts(task_tokenizer):
    """Token ids of a few task prompts of different lengths (6..13 tokens)."""
    texts = ["add:7+5=", "rev:abc=", "sort:dbcaeg=", "add:123+456=", "rev:qwertyu="]
    ids = [task_tokenizer.encode(t) for t in texts]
    assert len({len(i) for i in ids}) >= 4, "prompts must have mixed lengths"
    return ids


def rng_prompts(n: int, lo: int, hi: int, seed: int = 0) -> list[list[int]]:
    """Random prompts of token ids >= 3 (no EOS / mask / unk)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(3, VOCAB, size=int(rng.integers(lo, hi + 1))).tolist() for _ in range(n)]


# ----------------------------------------------------------------------------- backend helpers
def select_rows(rows: np.ndarray, mask_id: int, want_logits: bool):
    """A StepOutput from the read rows' logits [B, R, V], as the graph makes it: the top-1 token of
    each row with the mask token excluded (ties to the lowest id), its softmax probability, and the
    rows' logits only when asked for."""
    from dllm_trt.runtime.backends import StepOutput

    rows = np.asarray(rows, np.float32)
    z = rows.astype(np.float64)
    if 0 <= mask_id < z.shape[-1]:
        z[..., mask_id] = -np.inf
    tokens = z.argmax(-1)
    top = np.take_along_axis(z, tokens[..., None], -1)
    conf = 1.0 / np.exp(z - top).sum(-1)
    return StepOutput(tokens.astype(np.int64), conf.astype(np.float32), rows if want_logits else None)


def rows_output(logits: np.ndarray, logits_index: np.ndarray, mask_id: int, want_logits: bool):
    """select_rows of the rows ``logits_index`` [B, R] of full logits [B, L, V] (numpy stand-in backends)."""
    rows = np.take_along_axis(logits, logits_index[..., None].astype(np.int64), axis=1)
    return select_rows(rows, mask_id, want_logits)


class RecordingBackend:
    """Wraps a backend and records every forward (inputs, the read rows' logits, the row index); batch 1.
    It always asks the inner backend for the rows' logits, and hands them on only when asked."""

    def __init__(self, inner):
        self.inner, self.config, self.calls = inner, inner.config, []

    def allocate_cache(self, batch, capacity):
        return self.inner.allocate_cache(batch, capacity)

    def forward(self, input_ids, position_ids, attention_bias, cache, past_len, write_mask, logits_index,
                want_logits=False):
        out = self.inner.forward(input_ids, position_ids, attention_bias, cache, past_len, write_mask, logits_index,
                                 True)
        self.calls.append((input_ids.copy(), position_ids.copy(), past_len, out.logits, logits_index.copy()))
        return out if want_logits else out._replace(logits=None)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def cache_step_errors(backend, prompt: list[int], gen: GenerationConfig):
    """Decode one prompt with a bidirectional prefix/dual cache (batch 1) and measure how far each
    forward is from the uncached model.

    For every forward the full sequence the loop held at that moment is rebuilt (the last full
    forward's input, overwritten by the window's tokens) and run uncached. A full forward is
    compared on all the rows it reads (the block's); a cached one on the rows the loop uses: those
    predicting the block's still-masked positions. Returns ``(result, calls, errors)`` with
    ``errors[i] = (kind, max |logit diff|, max |probability diff|, fraction of those rows whose
    argmax agrees)``.
    """
    rec = RecordingBackend(backend)
    res = generate(rec, [prompt], gen)
    shift = 1 if backend.config.logits_shift else 0
    mask = backend.config.mask_token_id
    total = len(prompt) + gen.gen_length
    errors, x = [], None
    for step, (ids, pos, past_len, logits, index) in zip(res.steps, rec.calls):
        if past_len == 0:
            assert ids.shape[1] == total and step.kind == "full"
            x = ids[0].copy()
            got, rows = logits[0], index[0]
        else:
            x = x.copy()
            x[pos[0]] = ids[0]
            start = int(pos[0, 0])
            s = start + shift  # the window starts where the block's predictions are read
            assert (s - len(prompt)) % gen.block_length == 0
            targets = s + np.flatnonzero(x[s: s + gen.block_length] == mask)
            read = index[0].tolist()
            got = logits[0, [read.index(r) for r in targets - shift - start]]
            rows = targets - shift
        zeros = np.zeros((1, 1, total, total), np.float32)
        ref = backend.forward(x[None], np.arange(total)[None], zeros, None, 0, None, np.asarray(rows)[None], True)
        want = ref.logits[0]
        errors.append((step.kind, float(np.abs(got - want).max()), float(np.abs(_softmax(got) - _softmax(want)).max()),
                       float(np.mean(got.argmax(-1) == want.argmax(-1)))))
    return res, rec.calls, errors


@pytest.fixture(scope="session")
def bundled_export(tmp_path_factory):
    """Factory ``bundled_export(name) -> Path``: samples/checkpoints/<name> (or a path) exported to ONNX
    once per session (the serving tests share them; an export takes a few seconds)."""
    made: dict = {}

    def make(name: str) -> Path:
        if name not in made:
            from dllm_trt.export.onnx_export import export_onnx

            src = Path(name) if Path(name).is_absolute() else REPO / "samples" / "checkpoints" / name
            out = tmp_path_factory.mktemp("export") / src.name
            export_onnx(str(src), str(out), progress=False, log=lambda s: None)
            made[name] = out
        return made[name]

    return make


def rewrite_artifact_config(folder: Path, meta: dict) -> None:
    """Write an edited dllm_config.json as dllm-trt writes one (a fresh file manifest and config_sha256): the
    folder stands for one made that way (an older writer, another backend version), not a hand-edited one."""
    import json

    from dllm_trt.integrity import write_manifest

    (Path(folder) / "dllm_config.json").write_text(json.dumps(meta))
    write_manifest(folder)
