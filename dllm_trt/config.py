"""Model configuration, read from a Hugging Face ``config.json`` with the upstream keys.

Torch-free on purpose: the runtime, the exporter and the models all read the same
:class:`ModelConfig`, and the runtime must import without torch.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DllmError

# Upstream ``model_type`` -> family. The family decides the parameter layout (models/),
# the attention pattern and whether logits are shifted (runtime/).
FAMILIES = {
    "llada": "llada",
    "dream": "dream",
    "fast_dllm_qwen": "block_diffusion",
    "fast_dllm_v2_qwen": "block_diffusion",
    "sdar": "block_diffusion",
    "block_diffusion": "block_diffusion",
}

# Families whose prediction for position i is read from the logits at position i-1.
# SDAR predicts in place; Fast-dLLM v2 and Dream keep the AR "token shift".
SHIFTED_MODEL_TYPES = {"dream", "fast_dllm_qwen", "fast_dllm_v2_qwen", "block_diffusion"}


# Families built on Qwen3 (per-head q_norm/k_norm, no q/k/v bias unless attention_bias, head_dim given).
QWEN3_MODEL_TYPES = {"sdar"}


def _refuse_unsupported(raw: dict[str, Any], source: str, model_type: str) -> None:
    """Config keys that change the math and that dllm-trt does not implement: refuse, never ignore."""
    if raw.get("rope_scaling") not in (None, {}):
        raise DllmError(f"{source}: rope_scaling {raw['rope_scaling']!r} is not supported (dllm-trt implements "
                        "plain RoPE with rope_theta only); use a checkpoint whose config.json has rope_scaling null")
    if raw.get("use_sliding_window"):
        raise DllmError(f"{source}: use_sliding_window is true; sliding-window attention is not supported")
    if raw.get("num_experts") or raw.get("num_local_experts"):
        raise DllmError(f"{source}: mixture-of-experts checkpoints (num_experts) of model_type {model_type} "
                        "are not supported")


# LLaDA (OLMo-derived) config keys the upstream forward reads, with the values dllm-trt implements. A key
# absent from config.json reads as LLaDA-8B's value (every published LLaDA config.json spells them all out).
LLADA_ACTIVATIONS = ("silu", "gelu", "relu")
LLADA_NORM_TYPES = {"rms": "rms", "gemma_rms": "gemma_rms", "default": "layer", "low_precision": "layer"}
QWEN_ACTIVATIONS = ("silu", "swish", "gelu", "gelu_pytorch_tanh", "relu")


def _llada_forward_keys(raw: dict[str, Any], source: str, heads: int, hidden: int) -> dict[str, Any]:
    """The LLaDA keys that change the forward pass: implemented ones as ModelConfig fields, the rest refused
    by name when set to a value other than the one dllm-trt computes."""
    def refuse(key: str, why: str) -> None:
        raise DllmError(f"{source}: {key} = {raw.get(key)!r} is not supported ({why}); dllm-trt implements "
                        "LLaDA's llama block with RoPE")

    if str(raw.get("block_type", "llama")).lower() != "llama":
        refuse("block_type", "only the \"llama\" block (separate q/k/v and gate/up projections) is implemented")
    if int(raw.get("block_group_size") or 1) != 1:
        refuse("block_group_size", "grouped blocks are stored under other tensor names")
    if raw.get("alibi"):
        refuse("alibi", "ALiBi attention biases are not implemented; upstream's LLaDA forward requires RoPE")
    if not raw.get("rope", True):
        refuse("rope", "learned position embeddings are not implemented; upstream's LLaDA forward requires RoPE")
    if raw.get("attention_layer_norm"):
        refuse("attention_layer_norm", "the q/k layer norms are not implemented")
    if raw.get("clip_qkv") is not None:
        refuse("clip_qkv", "clamping q/k/v is not implemented")
    act = str(raw.get("activation_type", "silu")).lower()
    if act not in LLADA_ACTIVATIONS:
        refuse("activation_type", f"implemented: {', '.join(LLADA_ACTIVATIONS)}")
    norm = str(raw.get("layer_norm_type", "rms")).lower()
    if norm not in LLADA_NORM_TYPES:
        refuse("layer_norm_type", f"implemented: {', '.join(LLADA_NORM_TYPES)}")
    include_bias = bool(raw.get("include_bias", False))
    affine = bool(raw.get("layer_norm_with_affine", True))
    norm_bias = raw.get("bias_for_layer_norm")
    norm_bias = include_bias if norm_bias is None else bool(norm_bias)
    return dict(activation=act, norm_type=LLADA_NORM_TYPES[norm], norm_affine=affine, norm_bias=affine and norm_bias,
                linear_bias=include_bias, embedding_scale=hidden ** 0.5 if raw.get("input_emb_norm") else 1.0,
                logits_scale=hidden ** -0.5 if raw.get("scale_logits") else 1.0,
                rope_fp32=bool(raw.get("rope_full_precision", True)))


def _llada_kv_heads(raw: dict[str, Any], source: str, heads: int) -> int:
    """upstream's effective_n_kv_heads: n_kv_heads, or multi_query_attention (True: one KV head)."""
    n_kv, mqa = raw.get("n_kv_heads"), raw.get("multi_query_attention")
    if n_kv is None:
        return 1 if mqa is True else heads
    n_kv = int(n_kv)
    if mqa is not None and n_kv != (1 if mqa else heads):
        raise DllmError(f"{source}: n_kv_heads {n_kv} contradicts multi_query_attention {mqa!r} (which implies "
                        f"{1 if mqa else heads} KV heads); set one of them")
    return n_kv


def _qwen_forward_keys(raw: dict[str, Any], source: str, model_type: str) -> dict[str, Any]:
    act = str(raw.get("hidden_act", "silu")).lower()
    if act not in QWEN_ACTIVATIONS:
        raise DllmError(f"{source}: hidden_act {raw.get('hidden_act')!r} is not supported (implemented: "
                        f"{', '.join(QWEN_ACTIVATIONS)})")
    types = raw.get("layer_types")
    if isinstance(types, list) and any(t != "full_attention" for t in types):
        bad = next(t for t in types if t != "full_attention")
        raise DllmError(f"{source}: layer_types holds {bad!r}; only \"full_attention\" layers are supported "
                        "(sliding-window attention is not)")
    return dict(activation=act)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DllmError(f"{path} is not valid JSON: {e}") from e


def _tokenizer_mask_id(model_dir: Path) -> int | None:
    """The id of tokenizer_config.json's ``mask_token`` (from its ``added_tokens_decoder``), if any."""
    path = model_dir / "tokenizer_config.json"
    if not path.is_file():
        return None
    tc = _read_json(path)
    mask = tc.get("mask_token")
    mask = mask.get("content") if isinstance(mask, dict) else mask
    for token_id, token in (tc.get("added_tokens_decoder") or {}).items():
        if mask is not None and token.get("content") == mask:
            return int(token_id)
    return None


def ordinary_token(model_dir: Path, token_id: int) -> tuple[str, str] | None:
    """``(piece, why)`` when ``tokenizer.json`` maps ordinary text to ``token_id``: a piece of its model's vocabulary
    that is not one of its added (special) tokens, or its unknown token; None otherwise or without the file."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    st = path.stat()
    return _ordinary_token(str(path.resolve()), st.st_mtime_ns, st.st_size, token_id)


@functools.lru_cache(maxsize=8)
def _ordinary_token(path: str, mtime_ns: int, size: int, token_id: int) -> tuple[str, str] | None:
    """ordinary_token's answer per file version: a command reads the config more than once, and a real
    tokenizer.json is megabytes of JSON."""
    tj = _read_json(Path(path))
    model = tj.get("model") if isinstance(tj, dict) else None
    if not isinstance(model, dict):
        return None
    vocab = model.get("vocab")
    if isinstance(vocab, dict):  # BPE, WordPiece, WordLevel: piece -> id
        piece = next((k for k, v in vocab.items() if v == token_id), None)
        unk = model.get("unk_token")
    elif isinstance(vocab, list):  # Unigram: [piece, score] at index id
        piece = vocab[token_id][0] if 0 <= token_id < len(vocab) and isinstance(vocab[token_id], list) else None
        unk = vocab[model["unk_id"]][0] if isinstance(model.get("unk_id"), int) and 0 <= model["unk_id"] < len(vocab) \
            else None
    else:
        return None
    if piece is None:
        return None
    if unk is not None and piece == unk:
        return piece, "its unknown token (text it does not know becomes it)"
    added = {t.get("id") for t in tj.get("added_tokens") or [] if isinstance(t, dict)}
    return None if token_id in added else (piece, "an ordinary token (plain text encodes to it)")


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """One ``warning:`` line on stderr per distinct message (a config is read more than once per command)."""
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"warning: {message}", file=sys.stderr)


def check_mask_token(model_dir: Path, mask_token_id: int, fix: str) -> None:
    """Warn about a mask id that the folder's tokenizer produces for ordinary text: prompts holding that text read
    as masked positions (as in the upstream loops, which mask by id too). A warning, not an error: the upstream code
    runs such a checkpoint, and so does dllm-trt. ``fix`` says which file sets the id."""
    hit = ordinary_token(model_dir, mask_token_id)
    if hit is not None:
        piece, why = hit
        warn_once(f"mask_token_id {mask_token_id} is {model_dir / 'tokenizer.json'}'s {piece!r}, {why}, so prompts "
                  f"holding it read as masked positions; {fix}")


EOT_TOKEN = "<|eot_id|>"  # LLaDA's end-of-turn token (Llama-3 style chat template)


def tokenizer_special_id(model_dir: Path, content: str) -> int | None:
    """The id of the added (special) token ``content``: tokenizer_config.json's ``added_tokens_decoder``, else
    tokenizer.json's ``added_tokens``; None when the folder's tokenizer has no such token."""
    path = model_dir / "tokenizer_config.json"
    if path.is_file():
        for token_id, token in (_read_json(path).get("added_tokens_decoder") or {}).items():
            if isinstance(token, dict) and token.get("content") == content:
                return int(token_id)
    path = model_dir / "tokenizer.json"
    if path.is_file():
        for token in _read_json(path).get("added_tokens") or []:
            if isinstance(token, dict) and token.get("content") == content and "id" in token:
                return int(token["id"])
    return None


def _block_size(raw: dict[str, Any], model_type: str, source: str) -> int:
    """The block-diffusion block: SDAR calls it ``block_size``, Fast-dLLM v2 ``bd_size`` (default 32)."""
    if model_type.lower() in QWEN3_MODEL_TYPES:
        if "block_size" not in raw:
            raise DllmError(f"{source}: key 'block_size' is missing (SDAR's block length)")
        return int(raw["block_size"])
    return int(raw.get("bd_size", 32))


@dataclass(frozen=True)
class ModelConfig:
    """Everything the models and the decode loop need to know about a checkpoint."""

    family: str  # "llada" | "dream" | "block_diffusion"
    model_type: str  # upstream spelling, written back on save
    vocab_size: int  # rows of the LM head (logits width)
    embedding_size: int  # rows of the embedding table (LLaDA pads it)
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    qkv_bias: bool
    mask_token_id: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None
    max_position_embeddings: int
    logits_shift: bool  # prediction for position i comes from logits[i - 1]
    block_size: int | None  # block-diffusion block (bd_size; SDAR: block_size); None for bidirectional families
    qk_norm: bool = False  # Qwen3 layout (SDAR): per-head RMSNorm of q and k before RoPE
    # LLaDA's end-of-turn token (the tokenizer's <|eot_id|>; LLaDA generate's confidence_eos_eot_inf), None if none.
    # Not an upstream config.json key: read from the tokenizer files and kept as "eot_token_id" in exports.
    eot_token_id: int | None = None
    # Forward-pass keys beyond the LLaDA-8B / Qwen2 defaults (see _llada_forward_keys / _qwen_forward_keys):
    activation: str = "silu"  # MLP activation: LLaDA activation_type, Qwen hidden_act
    norm_type: str = "rms"  # "rms" | "gemma_rms" | "layer" (LLaDA layer_norm_type; "default" is "layer")
    norm_affine: bool = True  # LLaDA layer_norm_with_affine: norms have a weight
    norm_bias: bool = False  # LLaDA bias_for_layer_norm (None: include_bias): norms have a bias
    linear_bias: bool = False  # LLaDA include_bias: attn_out, ff_proj, up_proj, ff_out and the LM head biased
    embedding_scale: float = 1.0  # LLaDA input_emb_norm: embeddings times sqrt(d_model)
    logits_scale: float = 1.0  # LLaDA scale_logits: logits times 1/sqrt(d_model)
    rope_fp32: bool = False  # LLaDA rope_full_precision: RoPE computed in fp32 whatever the model dtype
    extra: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)

    @property
    def attention(self) -> str:
        return "block_causal" if self.family == "block_diffusion" else "bidirectional"

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> "ModelConfig":
        path = Path(model_dir) / "config.json"
        if Path(model_dir).is_file():
            raise DllmError(f"{model_dir} is a file; pass the folder that holds config.json and the *.safetensors")
        if not Path(model_dir).is_dir():
            raise DllmError(f"model folder {model_dir} does not exist; pass a local Hugging Face checkpoint folder")
        if not path.is_file():
            raise DllmError(f"{path} is missing: a checkpoint folder needs config.json next to its *.safetensors")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DllmError(f"{path} is not valid JSON: {e}") from e
        mask_from = f"set \"mask_token_id\" in {path} to the id of the tokenizer's mask token"
        if "mask_token_id" not in raw:  # Fast-dLLM v2's config.json has none: its tokenizer names the mask
            mask = _tokenizer_mask_id(Path(model_dir))
            if mask is not None:
                raw["mask_token_id"] = mask
                mask_from = (f"{Path(model_dir) / 'tokenizer_config.json'}'s mask_token names it; fix that, or set "
                             f"\"mask_token_id\" in {path}")
        if "eot_token_id" not in raw:
            eot = tokenizer_special_id(Path(model_dir), EOT_TOKEN)
            if eot is not None:
                raw["eot_token_id"] = eot
        config = cls.from_dict(raw, source=str(path))
        extra_eos = generation_eos_ids(Path(model_dir), max(config.vocab_size, config.embedding_size))
        if config.mask_token_id in extra_eos:
            raise DllmError(f"{Path(model_dir) / 'generation_config.json'}: eos_token_id lists {config.mask_token_id}, "
                            f"the mask_token_id; {mask_from}, or drop it from eos_token_id there")
        check_mask_token(Path(model_dir), config.mask_token_id, mask_from)
        union = config.eos_token_ids + tuple(e for e in extra_eos if e not in config.eos_token_ids)
        return config.replace(eos_token_ids=union) if union != config.eos_token_ids else config

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> "ModelConfig":
        if not isinstance(raw, dict):
            raise DllmError(f"{source}: expected a JSON object, found {type(raw).__name__}")
        try:
            return cls._from_dict(raw, source)
        except (ValueError, TypeError) as e:
            raise DllmError(f"{source}: {_bad_value(raw, e)}") from None

    @classmethod
    def _from_dict(cls, raw: dict[str, Any], source: str) -> "ModelConfig":
        model_type = str(raw.get("model_type", "")).strip()
        family = FAMILIES.get(model_type.lower())
        if family is None:
            known = ", ".join(sorted(FAMILIES))
            raise DllmError(
                f"{source}: unknown model_type {model_type!r}; dllm-trt supports {known}. "
                "Check that the folder holds a LLaDA, Dream or block-diffusion checkpoint."
            )

        def need(key: str) -> Any:
            if key not in raw:
                raise DllmError(f"{source}: key {key!r} is missing (model_type {model_type})")
            return raw[key]

        def eos_ids(value: Any) -> tuple[int, ...]:
            if value is None:
                return ()
            return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)

        if family == "llada":
            hidden = int(need("d_model"))
            heads = int(need("n_heads"))
            kv_heads = _llada_kv_heads(raw, source, heads)
            vocab = int(need("vocab_size"))
            mlp = raw.get("mlp_hidden_size")  # None: mlp_ratio * d_model, as upstream
            mlp = int(mlp) if mlp is not None else int(raw.get("mlp_ratio", 4)) * hidden
            if raw.get("embedding_size") is not None and int(raw["embedding_size"]) < vocab:
                raise DllmError(f"{source}: embedding_size {raw['embedding_size']} is smaller than vocab_size "
                                f"{vocab}; the embedding table must hold every token")
            cfg = dict(
                vocab_size=vocab,
                embedding_size=int(raw.get("embedding_size") or vocab),
                hidden_size=hidden,
                num_layers=int(need("n_layers")),
                num_heads=heads,
                num_kv_heads=kv_heads,
                head_dim=hidden // heads,
                intermediate_size=mlp,
                rope_theta=float(raw.get("rope_theta", 10000.0)),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
                tie_word_embeddings=bool(raw.get("weight_tying", False)),
                qkv_bias=bool(raw.get("include_bias", False) or raw.get("include_qkv_bias", False)),
                mask_token_id=int(raw.get("mask_token_id", 126336)),
                eos_token_ids=eos_ids(raw.get("eos_token_id", 126081)),
                pad_token_id=raw.get("pad_token_id"),
                max_position_embeddings=int(raw.get("max_sequence_length", 4096)),
                logits_shift=False,
                block_size=None,
                **_llada_forward_keys(raw, source, heads, hidden),
            )
        else:
            _refuse_unsupported(raw, source, model_type)
            hidden = int(need("hidden_size"))
            heads = int(need("num_attention_heads"))
            vocab = int(need("vocab_size"))
            qwen3 = model_type.lower() in QWEN3_MODEL_TYPES
            if family == "dream" and raw.get("head_dim") not in (None, hidden // heads):
                raise DllmError(f"{source}: head_dim {raw['head_dim']} is not hidden_size / num_attention_heads = "
                                f"{hidden // heads}; Dream's attention does not read head_dim (upstream uses "
                                "hidden_size / num_attention_heads), so this config.json is inconsistent")
            if family == "dream":
                mask_id = int(raw.get("mask_token_id", 151666))
            else:
                mask_id = int(raw.get("mask_token_id", 151665))
            cfg = dict(
                vocab_size=vocab,
                embedding_size=vocab,
                hidden_size=hidden,
                num_layers=int(need("num_hidden_layers")),
                num_heads=heads,
                num_kv_heads=int(raw.get("num_key_value_heads") or heads),
                # Dream's attention ignores head_dim (hidden / heads); Qwen2/3 (v2, SDAR) read it when given
                head_dim=hidden // heads if family == "dream" else int(raw.get("head_dim") or hidden // heads),
                intermediate_size=int(need("intermediate_size")),
                rope_theta=float(raw.get("rope_theta", 10000.0)),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                # Qwen2 always has q/k/v biases; Qwen3 has them only with attention_bias (then o_proj too).
                qkv_bias=bool(raw.get("attention_bias", False)) if qwen3 else True,
                mask_token_id=mask_id,
                eos_token_ids=eos_ids(raw.get("eos_token_id", 151643)),
                pad_token_id=raw.get("pad_token_id"),
                max_position_embeddings=int(raw.get("max_position_embeddings", 32768)),
                logits_shift=model_type.lower() in SHIFTED_MODEL_TYPES,
                block_size=_block_size(raw, model_type, source) if family == "block_diffusion" else None,
                qk_norm=qwen3,
                **_qwen_forward_keys(raw, source, model_type),
            )
        eot = raw.get("eot_token_id")
        cfg["eot_token_id"] = None if eot is None else int(eot)
        _check_ranges(cfg, raw, source)
        if cfg["num_heads"] % cfg["num_kv_heads"]:
            raise DllmError(f"{source}: {cfg['num_heads']} heads are not a multiple of {cfg['num_kv_heads']} KV heads")
        return cls(family=family, model_type=model_type, extra=dict(raw), **cfg)

    def to_hf_dict(self) -> dict[str, Any]:
        """The upstream config.json for this model (round-trips through :meth:`from_dict`)."""
        eos = list(self.eos_token_ids) if len(self.eos_token_ids) != 1 else self.eos_token_ids[0]
        if self.family == "llada":
            d = {
                "architectures": ["LLaDAModelLM"],
                "model_type": self.model_type,
                "d_model": self.hidden_size,
                "n_heads": self.num_heads,
                "n_kv_heads": self.num_kv_heads,
                "n_layers": self.num_layers,
                "mlp_hidden_size": self.intermediate_size,
                "vocab_size": self.vocab_size,
                "embedding_size": self.embedding_size,
                "rope_theta": self.rope_theta,
                "rms_norm_eps": self.rms_norm_eps,
                "weight_tying": self.tie_word_embeddings,
                "include_bias": self.linear_bias,
                "include_qkv_bias": self.qkv_bias,
                "bias_for_layer_norm": self.norm_bias,
                "layer_norm_with_affine": self.norm_affine,
                "input_emb_norm": self.embedding_scale != 1.0,
                "scale_logits": self.logits_scale != 1.0,
                "rope_full_precision": self.rope_fp32,
                "mask_token_id": self.mask_token_id,
                "eos_token_id": eos,
                "pad_token_id": self.pad_token_id,
                "max_sequence_length": self.max_position_embeddings,
                "activation_type": self.activation,
                "block_type": "llama",
                "layer_norm_type": {"layer": "default"}.get(self.norm_type, self.norm_type),
                "rope": True,
            }
        else:
            d = {
                "architectures": ["DreamModel" if self.family == "dream" else "Fast_dLLM_QwenForCausalLM"],
                "model_type": self.model_type,
                "hidden_size": self.hidden_size,
                "num_attention_heads": self.num_heads,
                "num_key_value_heads": self.num_kv_heads,
                "num_hidden_layers": self.num_layers,
                "intermediate_size": self.intermediate_size,
                "vocab_size": self.vocab_size,
                "rope_theta": self.rope_theta,
                "rms_norm_eps": self.rms_norm_eps,
                "tie_word_embeddings": self.tie_word_embeddings,
                "mask_token_id": self.mask_token_id,
                "eos_token_id": eos,
                "pad_token_id": self.pad_token_id,
                "max_position_embeddings": self.max_position_embeddings,
                "hidden_act": self.activation,
            }
            if self.head_dim != self.hidden_size // self.num_heads:
                d["head_dim"] = self.head_dim
            if self.qk_norm:
                d["architectures"] = ["SDARForCausalLM"]
                d["attention_bias"] = self.qkv_bias
                d["head_dim"] = self.head_dim
            if self.block_size is not None:
                d["block_size" if self.model_type.lower() in QWEN3_MODEL_TYPES else "bd_size"] = self.block_size
        if self.eot_token_id is not None:
            d["eot_token_id"] = self.eot_token_id
        # Keep keys we do not interpret (torch_dtype, transformers_version, ...).
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return d

    def save(self, model_dir: str | Path) -> None:
        Path(model_dir, "config.json").write_text(json.dumps(self.to_hf_dict(), indent=2) + "\n")

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def generation_eos_ids(model_dir: Path, rows: int) -> tuple[int, ...]:
    """``eos_token_id`` of the folder's generation_config.json (an int or a list, as Hugging Face writes it).

    Chat checkpoints list their end-of-turn token there (SDAR, Fast-dLLM v2: ``<|im_end|>``) and not in
    config.json, so the decode loop must stop on both files' ids.
    """
    path = model_dir / "generation_config.json"
    if not path.is_file():
        return ()
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DllmError(f"{path} is not valid JSON: {e}") from e
    value = raw.get("eos_token_id") if isinstance(raw, dict) else None
    if value is None:
        return ()
    try:
        ids = tuple(int(v) for v in value) if isinstance(value, list) else (int(value),)
    except (TypeError, ValueError):
        raise DllmError(f"{path}: eos_token_id must be an integer or a list of integers, found {value!r}") from None
    bad = [e for e in ids if not 0 <= e < rows]
    if bad:
        raise DllmError(f"{path}: eos_token_id {bad[0]} is outside the vocabulary of {rows} tokens; set it to the "
                        "tokenizer's end-of-text / end-of-turn ids")
    return ids


def _bad_value(raw: dict[str, Any], error: Exception) -> str:
    """Name the key whose value is not a number (``"n_layers": "six"``)."""
    for key, value in raw.items():
        if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
            continue
        if isinstance(value, str) and not key.endswith(("_id", "_size", "_length", "_theta", "_eps", "heads",
                                                        "layers", "_model", "_embeddings")):
            continue
        try:
            float(value)
        except (TypeError, ValueError):
            return f"key {key!r} must be a number, found {value!r}"
    return f"a value has the wrong type ({error})"


def _check_ranges(cfg: dict[str, Any], raw: dict[str, Any], source: str) -> None:
    """Sizes must be positive and special token ids inside the vocabulary (a family default may not be)."""
    for key in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                "max_position_embeddings"):
        if cfg[key] <= 0:
            raise DllmError(f"{source}: {key} must be positive, found {cfg[key]}")
    rows = max(cfg["vocab_size"], cfg["embedding_size"])
    if not 0 <= cfg["mask_token_id"] < rows:
        how = ("" if "mask_token_id" in raw else
               " (config.json has no \"mask_token_id\", so the family default was used)")
        raise DllmError(f"{source}: mask_token_id {cfg['mask_token_id']} is outside the vocabulary of {rows} "
                        f"tokens{how}; set \"mask_token_id\" to the id of the tokenizer's mask token")
    # the decode loop takes every position holding the mask id for one still to fill, and never proposes it: an
    # EOS / EOT that is the mask would stop a row at its first mask (an error); a pad that is the mask only makes
    # padded prompts read as masks, as in the upstream loops (a warning)
    mask = cfg["mask_token_id"]
    clash = ("eos_token_id" if mask in cfg["eos_token_ids"] else
             "eot_token_id" if cfg["eot_token_id"] == mask else
             "pad_token_id" if cfg["pad_token_id"] is not None and cfg["pad_token_id"] == mask else None)
    if clash:
        how = ("" if "mask_token_id" in raw else
               " (config.json has no \"mask_token_id\", so the family default was used)")
        msg = (f"{source}: mask_token_id {mask} is also the {clash}{how}, so that token reads as a position still to "
               "fill; set \"mask_token_id\" to the id of the tokenizer's mask token")
        if clash != "pad_token_id":
            raise DllmError(msg)
        warn_once(msg)
    if cfg["eot_token_id"] is not None and not 0 <= cfg["eot_token_id"] < rows:
        raise DllmError(f"{source}: eot_token_id {cfg['eot_token_id']} is outside the vocabulary of {rows} tokens")
    bad = [e for e in cfg["eos_token_ids"] if not 0 <= e < rows]
    if bad:
        how = "" if "eos_token_id" in raw else " (config.json has no \"eos_token_id\", so the family default was used)"
        raise DllmError(f"{source}: eos_token_id {bad[0]} is outside the vocabulary of {rows} tokens{how}; set "
                        "\"eos_token_id\" to the tokenizer's end-of-text id")
