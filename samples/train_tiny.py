"""Train the bundled tiny checkpoints (one per family) on the synthetic tasks of dllm_trt.tasks.

    python samples/train_tiny.py --family llada --out samples/checkpoints/llada-tiny --seconds 240 --device cuda
    python samples/train_tiny.py --family llada --task carry --out samples/checkpoints/carry-tiny --seconds 600 --device cuda

Tasks (dllm_trt.tasks): ``mix`` (default) is add/rev/sort with 16-token answers; ``carry`` is reversed-digit
addition of two 32-digit numbers (33-digit answers whose digits depend on each other through the carries),
gen_length 40 in one block.

Objectives (what the decode loop then relies on):
  llada            masked diffusion: mask answer tokens with probability t ~ U(0, 1), cross-entropy
                   on the masked ones, read in place;
  dream            the same, with Dream's shift: the prediction for position i is read at i - 1;
  block_diffusion  Fast-dLLM v2 style: the clean sequence and a noised copy in one pass
                   ([x_t ; x_0], block-causal), noise drawn per block; masked tokens are read at
                   i - 1 inside their block, and the first token of each block is predicted
                   autoregressively from the clean stream's last position of the block before.
The answer region is the answer followed by EOS padding, so the model learns to stop.
Evaluation uses the runtime's own decode loop and writes the model card with the numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dllm_trt.config import ModelConfig  # noqa: E402
from dllm_trt.models import build_model, save_model  # noqa: E402
from dllm_trt.runtime import TextTokenizer  # noqa: E402
from dllm_trt.runtime.backends.torch_backend import TorchBackend  # noqa: E402
from dllm_trt.tasks import build_tokenizer_json, make_examples  # noqa: E402
from evaluate_tiny import evaluate_folder  # noqa: E402

# task -> (gen_length, block_length of the bidirectional families' semi-autoregressive blocks)
TASK_LENGTHS = {"mix": (16, 8), "carry": (40, 40)}
BD_SIZE = 8  # block-diffusion block
SUB_BLOCK = 4
EOS_ID, MASK_ID = 0, 1


def tiny_config(family: str, vocab: int) -> ModelConfig:
    dims = dict(hidden=128, layers=6, heads=4, kv_heads=2, mlp=384)
    if family == "llada":
        raw = {"model_type": "llada", "d_model": dims["hidden"], "n_heads": dims["heads"], "n_kv_heads": dims["kv_heads"],
               "n_layers": dims["layers"], "mlp_hidden_size": dims["mlp"], "vocab_size": vocab,
               "embedding_size": 48, "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "weight_tying": False,
               "mask_token_id": MASK_ID, "eos_token_id": EOS_ID, "pad_token_id": EOS_ID, "max_sequence_length": 128}
    else:
        raw = {"model_type": "Dream" if family == "dream" else "Fast_dLLM_Qwen", "hidden_size": dims["hidden"],
               "num_attention_heads": dims["heads"], "num_key_value_heads": dims["kv_heads"],
               "num_hidden_layers": dims["layers"], "intermediate_size": dims["mlp"], "vocab_size": vocab,
               "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
               "mask_token_id": MASK_ID, "eos_token_id": EOS_ID, "pad_token_id": EOS_ID,
               "max_position_embeddings": 128}
        if family == "block_diffusion":
            raw["bd_size"] = BD_SIZE
    raw["torch_dtype"] = "float32"
    return ModelConfig.from_dict(raw)


def generation_settings(family: str, task: str = "mix") -> dict:
    gen_length, block_length = TASK_LENGTHS[task]
    if family == "block_diffusion":
        return {"gen_length": gen_length, "strategy": "threshold", "threshold": 0.9, "sub_block_length": SUB_BLOCK,
                "cache": "sub_block"}
    return {"gen_length": gen_length, "block_length": block_length, "steps": gen_length, "strategy": "low_confidence",
            "threshold": 0.9, "cache": "none"}


def encode_pool(tok: TextTokenizer, n: int, seed: int, family: str, task: str = "mix"):
    """Pre-tokenised training pool: x0 [N, T], prompt length [N], sequence length [N]."""
    gen_length = TASK_LENGTHS[task][0]
    exs = make_examples(n, seed, None if task == "mix" else task)
    seqs, plens, lens = [], [], []
    for e in exs:
        p, a = tok.encode(e.prompt), tok.encode(e.answer)
        if family == "block_diffusion":
            total = math.ceil((len(p) + len(a) + 1) / BD_SIZE) * BD_SIZE
        else:
            total = len(p) + gen_length
        seqs.append(p + a + [EOS_ID] * (total - len(p) - len(a)))
        plens.append(len(p))
        lens.append(total)
    width = max(lens)
    x0 = torch.full((n, width), EOS_ID, dtype=torch.long)
    for i, s in enumerate(seqs):
        x0[i, : len(s)] = torch.tensor(s)
    return x0, torch.tensor(plens), torch.tensor(lens)


def batch_loss(model, family: str, x0, plen, lens, device):
    B, T = x0.shape
    pos = torch.arange(T, device=device)[None].expand(B, T)
    key_ok = pos < lens[:, None]  # [B, T]
    answer = (pos >= plen[:, None]) & key_ok
    neg = torch.tensor(-1e9, device=device)
    if family in ("llada", "dream"):
        t = torch.rand(B, 1, device=device).clamp_min(1e-3)
        masked = answer & (torch.rand(B, T, device=device) < t)
        xt = torch.where(masked, MASK_ID, x0)
        bias = torch.where(key_ok[:, None, None, :], 0.0, neg).expand(B, 1, T, T).contiguous()
        logits, _ = model(xt, pos, bias)
        if family == "dream":  # prediction for i is read at i - 1
            logits, masked, target = logits[:, :-1], masked[:, 1:], x0[:, 1:]
        else:
            target = x0
        return F.cross_entropy(logits[masked].float(), target[masked])
    # Block diffusion: [x_t ; x_0] in one pass.
    blk = pos // BD_SIZE
    t = torch.rand(B, T // BD_SIZE + 1, device=device).clamp_min(1e-3).gather(1, blk)
    maskable = answer & (pos % BD_SIZE != 0)  # a block's first token is always known at inference
    masked = maskable & (torch.rand(B, T, device=device) < t)
    xt = torch.where(masked, MASK_ID, x0)
    inp = torch.cat([xt, x0], dim=1)
    p2 = torch.cat([pos, pos], dim=1)
    noisy = torch.arange(2 * T, device=device) < T
    qb, kb = blk.repeat(1, 2)[:, :, None], blk.repeat(1, 2)[:, None, :]
    qn, kn = noisy[None, :, None], noisy[None, None, :]
    allowed = ((qn & kn) & (qb == kb)) | ((qn & ~kn) & (kb < qb)) | ((~qn & ~kn) & (kb <= qb))
    allowed = allowed & key_ok.repeat(1, 2)[:, None, :]
    bias = torch.where(allowed, 0.0, neg)[:, None]
    logits, _ = model(inp, p2, bias)
    noisy_logits, clean_logits = logits[:, :T], logits[:, T:]
    # Masked tokens, read at i - 1 inside the block (never crosses a block: i % BD_SIZE != 0).
    m = masked[:, 1:]
    loss_mask = F.cross_entropy(noisy_logits[:, :-1][m].float(), x0[:, 1:][m])
    # First token of each answer block, autoregressively from the clean stream.
    ar = answer[:, 1:] & (pos[:, 1:] % BD_SIZE == 0)
    loss_ar = F.cross_entropy(clean_logits[:, :-1][ar].float(), x0[:, 1:][ar])
    return loss_mask + loss_ar


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", required=True, choices=["llada", "dream", "block_diffusion"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=240.0, help="training time budget")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval", type=int, default=1000, help="held-out prompts for the model card")
    ap.add_argument("--task", default="mix", choices=sorted(TASK_LENGTHS), help="training task (see above)")
    ap.add_argument("--pool", type=int, default=400_000, help="pre-generated training examples")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0: torch's default)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    tok_json = build_tokenizer_json()
    tmp_tok = Path(args.out + ".tokenizer.json")
    tmp_tok.parent.mkdir(parents=True, exist_ok=True)
    tmp_tok.write_text(tok_json)
    tok = TextTokenizer(tmp_tok)
    config = tiny_config(args.family, vocab=42)
    model = build_model(config).to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    x0_all, plen_all, len_all = encode_pool(tok, args.pool, args.seed + 1, args.family, args.task)
    x0_all, plen_all, len_all = x0_all.to(args.device), plen_all.to(args.device), len_all.to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    use_amp = args.device.startswith("cuda")
    start, step, ema = time.time(), 0, None
    model.train()
    while (elapsed := time.time() - start) < args.seconds:
        frac = elapsed / args.seconds
        lr = args.lr * min(1.0, step / 200) * 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, x0_all.shape[0], (args.batch,), device=args.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            loss = batch_loss(model, args.family, x0_all[idx], plen_all[idx], len_all[idx], args.device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % (500 if use_amp else 50) == 0:
            print(f"[{args.family}] step {step:6d}  {elapsed:6.1f}s  loss {ema:.4f}  lr {lr:.2e}", flush=True)
        step += 1
    model.eval().float()
    settings = generation_settings(args.family, args.task)
    device_name = torch.cuda.get_device_name() if use_amp else "cpu"
    extra = "".join(f" --{k} {v}" for k, v, d in (("batch", args.batch, 512), ("lr", args.lr, 1e-3),
                                                   ("pool", args.pool, 400_000), ("threads", args.threads, 0))
                    if v != d)
    metrics = {"family": args.family, "task": args.task, "command_device": args.device, "command_extra": extra,
               "params": n_params, "train_steps": step, "train_seconds": args.seconds,
               "batch": args.batch, "final_loss": ema, "device": device_name, "date": time.strftime("%Y-%m-%d")}
    save_model(model.cpu(), args.out, extra_files={
        "tokenizer.json": tok_json,
        # Hugging Face's file holds only HF keys; dllm-trt's decode settings go in their own file
        "generation_config.json": json.dumps({"eos_token_id": EOS_ID, "mask_token_id": MASK_ID}, indent=2) + "\n",
        "dllm_generation.json": json.dumps(settings, indent=2) + "\n",
        "train_metrics.json": json.dumps(metrics, indent=2) + "\n",
    })
    tmp_tok.unlink()
    # Evaluate with the runtime's own decode loop; this writes eval_metrics.json and README.md.
    out = Path(args.out)
    backend = TorchBackend(model.to(args.device), config, device=args.device)
    print(json.dumps(evaluate_folder(out, backend, args.eval, device_name)), flush=True)


if __name__ == "__main__":
    main()
