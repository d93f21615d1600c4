"""The ONNX Runtime graph (``dllm-trt export --ops ort``): the same contract, fewer and larger kernels.

A standard-op trace of a transformer layer is ~40 kernels on ONNX Runtime's CUDA EP (RoPE's
slices/concats/negations, casts around the fp32 softmax, transposes, the past concat), and its
q/k/v projections are three 4096 x 4096 GEMMs that cuBLAS runs at ~1.9x their weight-read time at
32 rows. This graph writes what ORT-GenAI's model builder writes instead, per layer:

  SkipSimplifiedLayerNormalization   residual add + RMSNorm in one kernel (both norms of a layer)
  MatMul over packed q|k|v           one GEMM, then one Split
  RotaryEmbedding                    on q and on k (cos/sin tables of every position, constants)
  MultiHeadAttention                 over (past, current) with the contract's additive bias
  MatMul over packed gate|up         one GEMM, then Split, QuickGelu(alpha=1) = SiLU, Mul

``--ops ort-cuda`` goes further with the project's own CUDA ops (dllm_trt/plugins/ort_cuda_ops.cu, domain
``dllm_trt.cuda``, bf16): per layer one CacheAttention (split, RoPE of q and k, the presents and the attention
over (past, current) with the bias, grouped-query heads too) in place of Split + 2 RotaryEmbedding +
MultiHeadAttention (its past concat and transposes) + the presents' transposes, and one SiluMul in place of
Split + QuickGelu + Mul; and once per graph one SelectRows in place of the row selection's ~16 ops over the
vocabulary (export/graph.py). ONNX Runtime loads them from a library built with
``python -m dllm_trt.plugins.ort_cuda_build`` (CUDA provider only).

Inputs, outputs and their meaning do not change (dllm_trt/contract.py), so the runtime drives all
graphs the same way. com.microsoft ops run only on ONNX Runtime: TensorRT builds need
``--ops standard`` (the default). MultiHeadAttention needs as many K/V heads as query heads; a
grouped-query model keeps the standard attention inside this graph (the other fusions apply).

How: the layer is written with small ``torch.autograd.Function`` s whose ``forward`` is the
reference math (so the traced module computes what the model computes) and whose ``symbolic``
emits a placeholder node in the ``dllm_fused`` domain; ``lower_fused`` then rewrites each
placeholder into the com.microsoft node, with the empty optional inputs/outputs ONNX Runtime
expects. Numerics: the fused kernels accumulate in fp32 and round once where the reference rounds
after each op; validation compares the graph with the unfused PyTorch model (same tolerances).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import onnx

from ..config import ModelConfig
from ..errors import DllmError
from ..models.layers import RMSNorm, attend, gather_rows, select_rows

PLACEHOLDER_DOMAIN = "dllm_fused"
MS_DOMAIN = "com.microsoft"
CUDA_DOMAIN = "dllm_trt.cuda"  # the project's ONNX Runtime CUDA ops (plugins/ort_cuda_ops.cu)
OPS = ("standard", "ort", "ort-cuda")
CUDA_HEAD_DIMS = (32, 64, 128, 256)  # head dims the CacheAttention kernel is instantiated for


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


class SkipRMSNorm(torch.autograd.Function):
    """(x + skip, RMSNorm(x + skip)) -> com.microsoft SkipSimplifiedLayerNormalization."""

    @staticmethod
    def forward(ctx, x, skip, weight, eps: float):
        s = x + skip
        return rms_norm(s, weight, eps), s

    @staticmethod
    def symbolic(g, x, skip, weight, eps):
        out = g.op(f"{PLACEHOLDER_DOMAIN}::SkipRMSNorm", x, skip, weight, epsilon_f=eps, outputs=2)
        out[0].setType(x.type())
        out[1].setType(x.type())
        return out


class Rotary(torch.autograd.Function):
    """Half-split RoPE of x [B, L, H*D] at position_ids [B, L] from tables [max_pos, D/2]."""

    @staticmethod
    def forward(ctx, x, position_ids, cos_table, sin_table, heads: int):
        return rope(x, position_ids, cos_table, sin_table, heads)

    @staticmethod
    def symbolic(g, x, position_ids, cos_table, sin_table, heads):
        out = g.op(f"{PLACEHOLDER_DOMAIN}::Rotary", x, position_ids, cos_table, sin_table, num_heads_i=heads)
        out.setType(x.type())
        return out


class Attention(torch.autograd.Function):
    """Attention of q/k/v [B, L, H*D] over (past [B, H, P, D], current) with an additive bias
    [B, 1, L, P + L] -> com.microsoft MultiHeadAttention; returns [B, L, H*D]."""

    @staticmethod
    def forward(ctx, q, k, v, bias, past_k, past_v, heads: int, scale: float):
        b, l, hd = q.shape
        d = hd // heads
        split = lambda t: t.view(b, l, heads, d).transpose(1, 2)  # noqa: E731
        out = attend(split(q), split(k), split(v), past_k, past_v, bias.float(), scale)
        return out.transpose(1, 2).reshape(b, l, hd)

    @staticmethod
    def symbolic(g, q, k, v, bias, past_k, past_v, heads, scale):
        out = g.op(f"{PLACEHOLDER_DOMAIN}::Attention", q, k, v, bias, past_k, past_v, num_heads_i=heads,
                   scale_f=scale)
        out.setType(q.type())
        return out


def rope(x: torch.Tensor, position_ids, cos_table, sin_table, heads: int) -> torch.Tensor:
    """Half-split RoPE of x [B, L, heads*D]: the math of ``Rotary`` (and of the model's RoPE)."""
    b, l, hd = x.shape
    d = hd // heads
    cos = torch.cat((cos_table[position_ids],) * 2, -1).unsqueeze(2)  # [B, L, 1, D]
    sin = torch.cat((sin_table[position_ids],) * 2, -1).unsqueeze(2)
    xh = x.view(b, l, heads, d)
    rotated = torch.cat((-xh[..., d // 2:], xh[..., : d // 2]), dim=-1)
    return (xh * cos + rotated * sin).reshape(b, l, hd)


class CacheAttention(torch.autograd.Function):
    """Packed q|k|v [B, L, (H + 2 Hkv) D] -> RoPE(q), RoPE(k), v -> attention over (past, current) with the
    contract's bias -> (out [B, L, H*D], present_key, present_value [B, Hkv, L, D]); -> dllm_trt.cuda
    CacheAttention (one kernel for the presents, one for the attention)."""

    @staticmethod
    def forward(ctx, qkv, position_ids, cos_table, sin_table, bias, past_k, past_v, heads: int, kv_heads: int,
                scale: float, rope_fp32: bool):
        # the tables are fp32 (the kernel's input); the model rotates in fp32 with LLaDA's rope_full_precision,
        # else in its own dtype (the tables then hold values of that dtype)
        b, l, _ = qkv.shape
        d = qkv.shape[-1] // (heads + 2 * kv_heads)
        q, k, v = torch.split(qkv, [heads * d, kv_heads * d, kv_heads * d], dim=-1)
        rot = torch.float32 if rope_fp32 else qkv.dtype
        cos_r, sin_r = cos_table.to(rot), sin_table.to(rot)
        q = rope(q.to(rot), position_ids, cos_r, sin_r, heads).to(qkv.dtype)
        k = rope(k.to(rot), position_ids, cos_r, sin_r, kv_heads).to(qkv.dtype)
        qh = q.view(b, l, heads, d).transpose(1, 2)
        present_k = k.view(b, l, kv_heads, d).transpose(1, 2)
        present_v = v.view(b, l, kv_heads, d).transpose(1, 2)
        out = attend(qh, present_k, present_v, past_k, past_v, bias.float(), scale)
        return out.transpose(1, 2).reshape(b, l, heads * d), present_k, present_v

    @staticmethod
    def symbolic(g, qkv, position_ids, cos_table, sin_table, bias, past_k, past_v, heads, kv_heads, scale, rope_fp32):
        out = g.op(f"{PLACEHOLDER_DOMAIN}::CacheAttention", qkv, position_ids, cos_table, sin_table, bias, past_k,
                   past_v, num_heads_i=heads, kv_num_heads_i=kv_heads, scale_f=scale, outputs=3)
        out[0].setType(qkv.type())
        out[1].setType(past_k.type())
        out[2].setType(past_v.type())
        return out


class SiluMul(torch.autograd.Function):
    """[gate | up] -> silu(gate) * up -> dllm_trt.cuda SiluMul: one kernel for Split + QuickGelu + Mul."""

    @staticmethod
    def forward(ctx, gate_up):
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    @staticmethod
    def symbolic(g, gate_up):
        out = g.op(f"{PLACEHOLDER_DOMAIN}::SiluMul", gate_up)
        out.setType(gate_up.type())
        return out


class SelectRows(torch.autograd.Function):
    """fp32 logits [B, R, V] -> models.layers.select_rows (top-1 token without the mask token, confidence, margin,
    neg_entropy) -> dllm_trt.cuda SelectRows: one kernel for the ~16 ops and vocabulary-sized temporaries of
    the standard selection."""

    @staticmethod
    def forward(ctx, logits, exclude, vocab_ids, mask_token_id: int):
        return tuple(select_rows(logits, mask_token_id, exclude, vocab_ids))

    @staticmethod
    def symbolic(g, logits, exclude, vocab_ids, mask_token_id):
        out = g.op(f"{PLACEHOLDER_DOMAIN}::SelectRows", logits, mask_token_id_i=mask_token_id, outputs=4)
        stats = logits.type().with_sizes(None) if hasattr(logits.type(), "with_sizes") else logits.type()
        out[0].setType(stats.with_dtype(torch.int64))
        for o in out[1:]:
            o.setType(stats.with_dtype(torch.float32))
        return out


class SiLU(torch.autograd.Function):
    """x * sigmoid(x) -> com.microsoft QuickGelu(alpha=1): one kernel."""

    @staticmethod
    def forward(ctx, x):
        return F.silu(x)

    @staticmethod
    def symbolic(g, x):
        out = g.op(f"{PLACEHOLDER_DOMAIN}::SiLU", x)
        out.setType(x.type())
        return out


class LayerParts(nn.Module):
    """One layer's weights, packed: q|k|v and gate|up concatenated along the output features."""

    def __init__(self, attn_norm: RMSNorm, q: nn.Linear, k: nn.Linear, v: nn.Linear, o: nn.Linear,
                 mlp_norm: RMSNorm, gate: nn.Linear, up: nn.Linear, down: nn.Linear,
                 q_norm: RMSNorm | None, k_norm: RMSNorm | None):
        super().__init__()
        with torch.no_grad():
            self.qkv = nn.Linear(q.in_features, q.out_features + k.out_features + v.out_features, bias=q.bias is not None,
                                 dtype=q.weight.dtype)
            self.qkv.weight.copy_(torch.cat((q.weight, k.weight, v.weight)))
            if q.bias is not None:
                self.qkv.bias.copy_(torch.cat((q.bias, k.bias, v.bias)))
            self.gate_up = nn.Linear(gate.in_features, 2 * gate.out_features, bias=False, dtype=gate.weight.dtype)
            self.gate_up.weight.copy_(torch.cat((gate.weight, up.weight)))
        self.sizes = [q.out_features, k.out_features, v.out_features]
        self.inter = gate.out_features
        self.attn_norm, self.mlp_norm, self.o, self.down = attn_norm, mlp_norm, o, down
        self.q_norm, self.k_norm = q_norm, k_norm


def layer_parts(model: nn.Module, config: ModelConfig) -> tuple[nn.Embedding, list[LayerParts], RMSNorm,
                                                                nn.Linear | None]:
    """(embedding, packed layers, final norm, LM head; None when tied to the embedding) of a LLaDA or
    Qwen2-layout model."""
    if config.family == "llada":
        t = model.model.transformer
        layers = [LayerParts(b.attn_norm, b.q_proj, b.k_proj, b.v_proj, b.attn_out, b.ff_norm, b.ff_proj, b.up_proj,
                             b.ff_out, None, None) for b in t.blocks]
        return t.wte, layers, t.ln_f, None if config.tie_word_embeddings else t.ff_out
    m = model.model
    layers = []
    for layer in m.layers:
        a = layer.self_attn
        layers.append(LayerParts(layer.input_layernorm, a.q_proj, a.k_proj, a.v_proj, a.o_proj,
                                 layer.post_attention_layernorm, layer.mlp.gate_proj, layer.mlp.up_proj,
                                 layer.mlp.down_proj, getattr(a, "q_norm", None), getattr(a, "k_norm", None)))
    return m.embed_tokens, layers, m.norm, None if config.tie_word_embeddings else model.lm_head


def rope_tables(config: ModelConfig, positions: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [positions, D/2], computed as models.layers.rope_cos_sin does (fp32, then the model dtype)."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    freqs = torch.arange(positions, dtype=torch.float32).unsqueeze(-1) * inv_freq
    return freqs.cos().to(dtype), freqs.sin().to(dtype)


def table_positions(config: ModelConfig) -> int:
    """Rows of the RoPE tables: every position the runtime's cache can hold (max_position_embeddings,
    plus one spare block and its anchor for block diffusion, as the ORT backend sizes its cache)."""
    return config.max_position_embeddings + ((config.block_size or 0) + 1 if config.block_size else 0)


class FusedModel(nn.Module):
    """The model's forward with fused ops and packed weights; same signature and results as the model's."""

    def __init__(self, model: nn.Module, cuda_ops: bool = False):
        super().__init__()
        c: ModelConfig = model.config
        self.cuda_ops = cuda_ops  # --ops ort-cuda: CacheAttention / SiluMul placeholders
        unfused = [name for name, on in (
            (f"activation {c.activation}", c.activation not in ("silu", "swish")),
            (f"norm type {c.norm_type}", c.norm_type != "rms"), ("norms without weight", not c.norm_affine),
            ("norm biases", c.norm_bias), ("MLP / output biases (include_bias)", c.linear_bias),
            ("input_emb_norm", c.embedding_scale != 1.0), ("scale_logits", c.logits_scale != 1.0)) if on]
        if unfused:
            raise DllmError(f"--ops ort: the fused graph does not implement {', '.join(unfused)}; "
                            "export with --ops standard")
        self.config = c
        self.embed, parts, self.norm, self.lm_head = layer_parts(model, c)
        self.layers = nn.ModuleList(parts)
        dtype = self.embed.weight.dtype
        cos, sin = rope_tables(c, table_positions(c), dtype)
        self.register_buffer("cos_table", cos, persistent=False)
        self.register_buffer("sin_table", sin, persistent=False)
        if cuda_ops:  # CacheAttention takes fp32 tables: exact for rope_full_precision, the model dtype's values else
            cos32, sin32 = rope_tables(c, table_positions(c), torch.float32)
            if not c.rope_fp32:
                cos32, sin32 = cos32.to(dtype).float(), sin32.to(dtype).float()
            self.register_buffer("cos_table32", cos32, persistent=False)
            self.register_buffer("sin_table32", sin32, persistent=False)
        self.fused_attention = c.num_heads == c.num_kv_heads  # MultiHeadAttention has one head count
        self.scale = c.head_dim ** -0.5

    def attention(self, p: LayerParts, h, position_ids, bias, past_k, past_v):
        c = self.config
        b, l, _ = h.shape
        if self.cuda_ops and p.q_norm is None:
            if past_k is None:  # the traced graph always has a past (P may be 0)
                past_k = past_v = h.new_zeros(b, c.num_kv_heads, 0, c.head_dim)
            out, present_k, present_v = CacheAttention.apply(p.qkv(h), position_ids, self.cos_table32,
                                                             self.sin_table32, bias, past_k, past_v, c.num_heads,
                                                             c.num_kv_heads, self.scale, c.rope_fp32)
            return p.o(out), present_k, present_v
        q, k, v = torch.split(p.qkv(h), p.sizes, dim=-1)
        if p.q_norm is not None:  # Qwen3: per-head RMSNorm before RoPE
            q = p.q_norm(q.view(b, l, c.num_heads, c.head_dim)).view(b, l, -1)
            k = p.k_norm(k.view(b, l, c.num_kv_heads, c.head_dim)).view(b, l, -1)
        q = Rotary.apply(q, position_ids, self.cos_table, self.sin_table, c.num_heads)
        k = Rotary.apply(k, position_ids, self.cos_table, self.sin_table, c.num_kv_heads)
        present_k = k.view(b, l, c.num_kv_heads, c.head_dim).transpose(1, 2)
        present_v = v.view(b, l, c.num_kv_heads, c.head_dim).transpose(1, 2)
        if self.fused_attention:
            out = Attention.apply(q, k, v, bias, past_k, past_v, c.num_heads, self.scale)
        else:
            qh = q.view(b, l, c.num_heads, c.head_dim).transpose(1, 2)
            out = attend(qh, present_k, present_v, past_k, past_v, bias.float(), self.scale)
            out = out.transpose(1, 2).reshape(b, l, c.num_heads * c.head_dim)
        return p.o(out), present_k, present_v

    def forward(self, input_ids, position_ids, attention_bias, past_key_values=None, logits_index=None):
        c = self.config
        x = self.embed(input_ids)
        dtype = x.dtype
        # MultiHeadAttention takes the bias in the model dtype; fp16 cannot hold -1e9 (it would be
        # -inf, and a row with every key masked would give NaN), so clamp to the dtype's range first.
        bias = attention_bias
        if dtype == torch.float16:
            bias = bias.clamp(min=torch.finfo(torch.float16).min)
        bias = bias.to(dtype)
        presents = []
        pending = None  # the last sublayer's output, added to x by the next SkipRMSNorm
        for i, p in enumerate(self.layers):
            pk, pv = past_key_values[i] if past_key_values is not None else (None, None)
            if pending is None:
                h = p.attn_norm(x)
            else:
                h, x = SkipRMSNorm.apply(x, pending, p.attn_norm.weight, p.attn_norm.eps)
            a, k, v = self.attention(p, h, position_ids, bias, pk, pv)
            presents.append((k, v))
            h, x = SkipRMSNorm.apply(x, a, p.mlp_norm.weight, p.mlp_norm.eps)
            if self.cuda_ops:
                pending = p.down(SiluMul.apply(p.gate_up(h)))
            else:
                gate, up = torch.split(p.gate_up(h), [p.inter, p.inter], dim=-1)
                pending = p.down(SiLU.apply(gate) * up)
        # the last residual add and the final norm on the read rows only
        h, _ = SkipRMSNorm.apply(gather_rows(x, logits_index), gather_rows(pending, logits_index),
                                 self.norm.weight, self.norm.eps)
        head = self.embed.weight if self.lm_head is None else self.lm_head.weight
        logits = torch.matmul(h, head.t())
        if logits.shape[-1] != c.vocab_size:
            logits = logits[..., : c.vocab_size]
        return logits, presents


def lower_fused(model: onnx.ModelProto) -> dict[str, int]:
    """Rewrite the trace's ``dllm_fused`` placeholders into com.microsoft nodes; returns counts per op."""
    counts: dict[str, int] = {}
    for n in model.graph.node:
        if n.domain != PLACEHOLDER_DOMAIN:
            continue
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        ins, outs = list(n.input), list(n.output)
        if n.op_type == "SkipRMSNorm":
            new = onnx.helper.make_node("SkipSimplifiedLayerNormalization", ins, [outs[0], "", "", outs[1]],
                                        name=n.name, domain=MS_DOMAIN, epsilon=attrs["epsilon"])
        elif n.op_type == "Rotary":
            new = onnx.helper.make_node("RotaryEmbedding", ins, outs, name=n.name, domain=MS_DOMAIN,
                                        num_heads=attrs["num_heads"], interleaved=0)
        elif n.op_type == "Attention":
            q, k, v, bias, pk, pv = ins
            # past requires present outputs; they are not read (the contract's present.* are the current K/V)
            new = onnx.helper.make_node("MultiHeadAttention", [q, k, v, "", "", bias, pk, pv],
                                        [outs[0], f"{n.name}/present_key", f"{n.name}/present_value"],
                                        name=n.name, domain=MS_DOMAIN, num_heads=attrs["num_heads"],
                                        scale=attrs["scale"])
        elif n.op_type == "SiLU":
            new = onnx.helper.make_node("QuickGelu", ins, outs, name=n.name, domain=MS_DOMAIN, alpha=1.0)
        elif n.op_type == "CacheAttention":  # + the workspace of its split keys, an output nobody reads
            new = onnx.helper.make_node("CacheAttention", ins, outs + [f"{n.name}/workspace"], name=n.name,
                                        domain=CUDA_DOMAIN,
                                        num_heads=attrs["num_heads"], kv_num_heads=attrs["kv_num_heads"],
                                        scale=attrs["scale"])
        elif n.op_type == "SiluMul":
            new = onnx.helper.make_node("SiluMul", ins, outs, name=n.name, domain=CUDA_DOMAIN)
        elif n.op_type == "SelectRows":
            new = onnx.helper.make_node("SelectRows", ins[:1], outs, name=n.name, domain=CUDA_DOMAIN,
                                        mask_token_id=attrs["mask_token_id"])
        else:
            raise ValueError(f"unknown placeholder {n.op_type}")
        n.CopyFrom(new)
    kept = [o for o in model.opset_import if o.domain != PLACEHOLDER_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    for domain in {n.domain for n in model.graph.node} & {MS_DOMAIN, CUDA_DOMAIN}:
        if not any(o.domain == domain for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    return counts


def graph_ops(model: onnx.ModelProto) -> str:
    """"ort-cuda" when the graph holds dllm_trt.cuda ops, "ort" when com.microsoft ops, else "standard"."""
    domains = {n.domain for n in model.graph.node}
    return "ort-cuda" if CUDA_DOMAIN in domains else "ort" if MS_DOMAIN in domains else "standard"


def check_cuda_ops(config: ModelConfig, dtype: str) -> None:
    """--ops ort-cuda needs what the kernels implement: bf16 and a head dim they are instantiated for."""
    if dtype != "bf16":
        raise DllmError(f"--ops ort-cuda: the project's CUDA ops are bf16 kernels; export with --dtype bf16 "
                        f"(or --ops ort for {dtype})")
    if config.head_dim not in CUDA_HEAD_DIMS:
        raise DllmError(f"--ops ort-cuda: head dim {config.head_dim} is not one of {CUDA_HEAD_DIMS} (the "
                        "CacheAttention kernel's); export with --ops ort")
