"""Measure a tiny checkpoint's exact match and tokens per forward, and write its model card.

    python samples/evaluate_tiny.py samples/checkpoints/bd-tiny [--n 1000] [--device cpu]

Two decodings per model: one token per step (LLaDA low-confidence with steps = gen_length;
threshold 1.0 for block diffusion) and Fast-dLLM threshold 0.9 (on a long-answer task also 0.7 and 0.5,
where parallel decoding starts to guess). Prompts are held out (``make_examples(n, seed=12345, task)``, the
task of the checkpoint's train_metrics.json; training draws from seed 1).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dllm_trt.config import ModelConfig  # noqa: E402
from dllm_trt.runtime import GenerationConfig, TextTokenizer, generate  # noqa: E402
from dllm_trt.runtime.settings import folder_generation_defaults  # noqa: E402
from dllm_trt.tasks import exact_match, make_examples  # noqa: E402

EVAL_SEED = 12345
FAMILY_TEXT = {
    "llada": "LLaDA layout (bidirectional)",
    "dream": "Dream layout (Qwen2, bidirectional, shifted logits)",
    "block_diffusion": "block-diffusion layout (Fast-dLLM v2 / Qwen2, block-causal, shifted logits)",
}


TASK_TEXT = {
    "mix": ("It is a real, trained model, not random weights: it solves three synthetic tasks exactly.\n\n"
            "- Tasks (prompt -> answer, character tokens): `add:123+45=` -> `168` (0..999 + 0..999),\n"
            "  `rev:abcde=` -> `edcba`, `sort:dbca=` -> `abcd` (3-8 lowercase letters); the answer is followed by EOS."),
    "carry": ("It is a real, trained model, not random weights, for a task where parallel decoding has to guess:\n"
              "long addition, whose answer digits depend on each other through the carries.\n\n"
              "- Task `carry` (dllm_trt.tasks): `sum:A+B=` -> the digits of A + B, A and B of 32 digits each and\n"
              "  every number written least significant digit first (leading zeros kept), so the answer has 33 digits,\n"
              "  followed by EOS. Answer digit i is (a_i + b_i + carry_i) mod 10: after a column summing to 9 the digit\n"
              "  is only settled once its neighbour is decoded. Trained on uniform digits (`carry`); also measured on\n"
              "  `carry_chain`, the same sums with every column summing to 9 with probability 1/2 (long carry chains,\n"
              "  rare in training): decoded one token per step the model still solves them, but it is over-confident\n"
              "  in the digits of a chain before the chain's start is decoded, so parallel rules commit wrong digits."),
}


EXTRA_EVAL_TASKS = {"carry": ("carry_chain",)}  # also measured on these (same model, harder inputs)


def task_of(model_dir: Path) -> str:
    metrics = model_dir / "train_metrics.json"
    return json.loads(metrics.read_text()).get("task", "mix") if metrics.is_file() else "mix"


def decodings(family: str, settings: dict, task: str = "mix") -> dict[str, dict]:
    if family == "block_diffusion":
        one = ("threshold 1.0 (one token per step)", dict(settings, strategy="threshold", threshold=1.0))
    else:
        one = ("low-confidence, one token per step", dict(settings, strategy="low_confidence", steps=settings["gen_length"]))
    out = {"one_token_per_step": one,
           "threshold_0.9": ("threshold 0.9 (Fast-dLLM parallel)", dict(settings, strategy="threshold", threshold=0.9))}
    if task != "mix":
        for t in (0.7, 0.5):
            out[f"threshold_{t}"] = (f"threshold {t} (Fast-dLLM parallel)", dict(settings, strategy="threshold",
                                                                                threshold=t))
    return out


def evaluate(backend, tok: TextTokenizer, n: int, settings: dict, batch: int = 250, task: str = "mix") -> dict:
    exs = make_examples(n, EVAL_SEED, None if task == "mix" else task)
    preds, tpf, t0 = [], 0.0, time.perf_counter()
    for i in range(0, n, batch):
        chunk = exs[i: i + batch]
        r = generate(backend, [tok.encode(e.prompt) for e in chunk], GenerationConfig(**settings))
        preds += [tok.decode(t) for t in r.tokens]
        tpf += r.tokens_per_forward * len(chunk)
    return {"exact_match": exact_match(preds, exs), "tokens_per_forward": tpf / n, "n": n,
            "seconds": round(time.perf_counter() - t0, 3)}


def evaluate_folder(model_dir: Path, backend, n: int, device_name: str) -> dict:
    config = ModelConfig.from_pretrained(model_dir)
    settings = folder_generation_defaults(model_dir)
    tok = TextTokenizer(model_dir)
    task = task_of(model_dir)
    results = {}
    for t in (task, *EXTRA_EVAL_TASKS.get(task, ())):
        prefix = "" if t == task else f"{t}/"
        for key, (name, s) in decodings(config.family, settings, task).items():
            results[prefix + key] = dict(evaluate(backend, tok, n, s, task=t), decoding=name, settings=s, task=t)
    metrics = {"device": device_name, "date": time.strftime("%Y-%m-%d"), "eval_seed": EVAL_SEED, "task": task,
               **results}
    (model_dir / "eval_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (model_dir / "README.md").write_text(model_card(model_dir, config, settings, metrics))
    return metrics


def model_card(model_dir: Path, config: ModelConfig, settings: dict, metrics: dict) -> str:
    train = json.loads((model_dir / "train_metrics.json").read_text())
    n = metrics["one_token_per_step"]["n"]
    n_flag = "" if n == 1000 else f" --n {n}"
    task = metrics.get("task", "mix")
    several = task != "mix"
    rows = "\n".join(("| `" + r["task"] + "` " if several else "")
                     + f"| {r['decoding']} | {r['exact_match'] * 100:.1f}% | {r['tokens_per_forward']:.2f} |"
                     for r in metrics.values() if isinstance(r, dict))
    head = ("| task | decoding | exact match | tokens per forward |\n| --- | --- | --- | --- |" if several else
            "| decoding | exact match | tokens per forward |\n| --- | --- | --- |")
    task_flag = "" if task == "mix" else f" --task {task}"
    block = f", bd_size {config.block_size}" if config.block_size else ""
    return f"""# {model_dir.name}

A tiny {FAMILY_TEXT[config.family]}{block} diffusion LM, trained by dllm-trt for its tests and demo.
{TASK_TEXT[task]}
- Size: {train['params']:,} parameters: {config.num_layers} layers, hidden {config.hidden_size}, {config.num_heads} heads,
  {config.num_kv_heads} KV heads, vocabulary {config.vocab_size}; fp32 safetensors with the upstream parameter names.
- Tokenizer: `tokenizer.json`, a character WordLevel tokenizer trained with `tokenizers`
  (0 = `<|endoftext|>`, 1 = `<|mask|>`).
- Training: `python samples/train_tiny.py --family {config.family}{task_flag} --out {model_dir.as_posix()} --seconds {train['train_seconds']:g} --device {train.get('command_device', 'cuda')}{train.get('command_extra', '')}`
  on {train['device']} ({train['date']}): {train['train_steps']} steps of batch {train.get('batch', 512)}, final loss {train['final_loss']:.2e}.
- Decode settings (`dllm_generation.json`): `{json.dumps(settings)}`

## Exact match on {metrics['one_token_per_step']['n']} held-out prompts{' per task' if several else ''}

Measured with `python samples/evaluate_tiny.py {model_dir.as_posix()}{n_flag}` on {metrics['device']}, {metrics['date']}
(tokens per forward counts every forward of a request, the prefill included).

{head}
{rows}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dirs", nargs="+", type=Path)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    from dllm_trt.runtime.backends.torch_backend import TorchBackend

    for d in args.model_dirs:
        backend = TorchBackend.from_pretrained(str(d), device=args.device)
        name = "cpu " + platform.machine() if args.device == "cpu" else args.device
        if args.device.startswith("cuda"):
            import torch

            name = torch.cuda.get_device_name()
        m = evaluate_folder(d, backend, args.n, name)
        print(d.name, json.dumps({k: {kk: v[kk] for kk in ("exact_match", "tokens_per_forward")}
                                  for k, v in m.items() if isinstance(v, dict)}))


if __name__ == "__main__":
    main()
