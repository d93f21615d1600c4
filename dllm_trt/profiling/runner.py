"""Prompts, backends, and the measurement of one decode setting."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DllmError
from ..runtime import GenerationConfig, GenerationResult, generate
from .memory import reset_device_peak
from .timing import CACHE_SECTIONS, RequestTiming, StepTimer, summary_ms

BUILTIN_SEED = 12345  # the held-out prompts of samples/evaluate_tiny.py


# ---------------------------------------------------------------------- prompts
@dataclass
class PromptSet:
    source: str  # "builtin", a .jsonl path, or "synthetic"
    ids: list[list[int]]
    texts: list[str] | None = None
    answers: list[str | None] | None = None
    tokenizer: object | None = None  # TextTokenizer; None for synthetic prompts

    @property
    def with_answers(self) -> int:
        return sum(a is not None for a in (self.answers or []))

    def describe(self) -> dict:
        lens = [len(i) for i in self.ids]
        return {"source": self.source, "n": len(self.ids), "with_answers": self.with_answers,
                "prompt_tokens": {"min": min(lens), "median": float(np.median(lens)), "max": max(lens)}}


def read_jsonl(path: str | Path) -> tuple[list[str], list[str | None]]:
    """Lines {"prompt": ..., "answer": optional}."""
    p = Path(path)
    if not p.is_file():
        raise DllmError(f"prompt file {p} not found; give a .jsonl file with one {{\"prompt\": ...}} per line, "
                        "or --prompts builtin, or --synthetic-prompt-len N")
    texts, answers = [], []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise DllmError(f"{p}:{i} is not JSON ({e})") from e
        if not isinstance(d, dict) or not isinstance(d.get("prompt"), str):
            raise DllmError(f"{p}:{i} needs a \"prompt\" string")
        texts.append(d["prompt"])
        answers.append(None if d.get("answer") is None else str(d["answer"]))
    if not texts:
        raise DllmError(f"{p} holds no prompts")
    return texts, answers


def load_prompts(spec: str, n: int | None, model_dir: Path, config, synthetic_len: int | None = None,
                 seed: int = 0) -> PromptSet:
    """``builtin`` (dllm_trt.tasks' mix, seed 12345, answers known), ``builtin:TASK`` (one task, e.g. carry),
    a .jsonl file, or random token ids."""
    if synthetic_len is not None:
        if synthetic_len <= 0:
            raise DllmError("--synthetic-prompt-len must be positive")
        special = {config.mask_token_id, config.pad_token_id, *(config.eos_token_ids or ())}
        allowed = np.array([t for t in range(config.vocab_size) if t not in special])
        rng = np.random.default_rng(seed)
        ids = [rng.choice(allowed, size=synthetic_len).tolist() for _ in range(n or 8)]
        return PromptSet("synthetic", ids)
    from ..runtime import TextTokenizer

    if not (model_dir / "tokenizer.json").is_file():
        raise DllmError(f"{model_dir} has no tokenizer.json; profile it with --synthetic-prompt-len N "
                        "(random token ids, no accuracy)")
    tok = TextTokenizer(model_dir)
    if spec == "builtin" or spec.startswith("builtin:"):
        from ..tasks import LONG_TASKS, TASKS, make_examples

        task = spec.partition(":")[2] or None
        if task is not None and task not in TASKS + LONG_TASKS:
            raise DllmError(f"--prompts {spec}: unknown task {task!r}; use one of {', '.join(TASKS + LONG_TASKS)}")
        exs = make_examples(n or 20, seed=BUILTIN_SEED, task=task)
        texts, answers = [e.prompt for e in exs], [e.answer for e in exs]
    else:
        texts, answers = read_jsonl(spec)
        if n:
            texts, answers = texts[:n], answers[:n]
    ids = [tok.encode(t) for t in texts]
    if any(len(i) == 0 for i in ids):
        raise DllmError("a prompt encodes to no tokens")
    return PromptSet(spec, ids, texts, answers, tok)


# ---------------------------------------------------------------------- backends
def open_backend(engine: Path, name: str, provider: str, threads: int | None = None, dtype: str = "fp32"):
    """``ort`` on an export folder, ``torch`` on a checkpoint folder (provider cuda -> device cuda), or ``trt``
    on a ``dllm-trt build`` engine folder (always on the GPU)."""
    from ..runtime.backends import load_backend

    if name == "torch":
        if not (engine / "config.json").is_file():
            raise DllmError(f"--backend torch needs a checkpoint folder (config.json + safetensors); {engine} is not one")
        if threads:
            import torch

            torch.set_num_threads(threads)
        return load_backend("torch", str(engine), dtype=dtype, device="cuda" if provider == "cuda" else "cpu")
    if name == "trt":
        return load_backend("trt", str(engine))
    return load_backend("ort", str(engine), provider=provider, intra_op_threads=threads)


# ---------------------------------------------------------------------- one setting
def batches_of(ids: list[list[int]], batch: int) -> list[list[list[int]]]:
    return [ids[i: i + batch] for i in range(0, len(ids), batch)]


def measure(backend, prompts: PromptSet, gen: GenerationConfig, warmup: int = 1, repeat: int = 1, batch: int = 1,
            progress: Callable[[], None] | None = None) -> dict:
    """Decode every prompt ``repeat`` times after ``warmup`` untimed requests; the metrics of one setting.

    A request is one ``generate`` call on ``batch`` prompts. Exact match is scored on the first
    repeat (decoding at temperature 0 repeats itself).
    """
    chunks = batches_of(prompts.ids, max(batch, 1))
    tick = progress or (lambda: None)
    for i in range(warmup):
        generate(backend, chunks[i % len(chunks)], gen)
        tick()
    reset_device_peak(backend)
    timer = StepTimer(sync=getattr(backend, "synchronize", None))
    results: list[GenerationResult] = []
    backend.timer = timer
    try:
        for _ in range(repeat):
            for chunk in chunks:
                timer.begin_request()
                results.append(generate(backend, chunk, gen, timer=timer))
                timer.end_request()
                tick()
    finally:
        backend.timer = None
    return summarize(timer.requests, results, prompts, len(chunks))


def summarize(requests: list[RequestTiming], results: list[GenerationResult], prompts: PromptSet,
              per_repeat: int) -> dict:
    """Latency by forward kind, the per-step breakdown, throughput, exact match and the step trace."""
    steps_all, records_all = [], []
    for req, res in zip(requests, results):
        if [s.kind for s in req.steps] != [r.kind for r in res.steps]:
            raise AssertionError("timer and decode record disagree on the forward sequence")
        steps_all += req.steps
        records_all += res.steps
    wall = sum(r.wall_s for r in requests)
    decoded = sum(r.decoded_tokens for r in results)
    forwards = len(steps_all)

    by_kind: dict[str, dict] = {}
    for kind in dict.fromkeys(s.kind for s in steps_all):
        idx = [i for i, s in enumerate(steps_all) if s.kind == kind]
        d = summary_ms([steps_all[i].forward_s for i in idx])
        d["query_len"] = float(np.median([records_all[i].query_len for i in idx]))
        d["past_len"] = float(np.median([records_all[i].past_len for i in idx]))
        d["tokens_per_forward"] = sum(sum(records_all[i].unmasked) for i in idx) / len(idx)
        by_kind[kind] = d
    by_kind["all"] = summary_ms([s.forward_s for s in steps_all])
    by_kind["all"]["tokens_per_forward"] = decoded / max(forwards, 1)

    def part(values: list[float]) -> dict:
        total = sum(values)
        return {"total_ms": total * 1e3, "per_step_ms": total * 1e3 / max(forwards, 1),
                "share": total / wall if wall > 0 else None}

    cache_timed = any(s.sections for s in steps_all)
    breakdown = {
        "model_forward": part([s.model_s for s in steps_all]),
        "cache_update": part([s.cache_s for s in steps_all]),
        "unmask": part([s.unmask_s for s in steps_all]),
        "host_overhead": part([s.host_s for s in steps_all] + [r.setup_s for r in requests]),
        "step": part([s.step_s for s in steps_all]),
        "setup": part([r.setup_s for r in requests]),
    }
    for name in CACHE_SECTIONS:
        breakdown[name] = part([s.sections.get(name, 0.0) for s in steps_all])
    breakdown["cache_timed"] = cache_timed  # False: the backend reported no cache sections (none ran, or untimed)

    out = {
        "requests": len(requests),
        "forwards": forwards,
        "forwards_per_request": forwards / max(len(requests), 1),
        "decoded_tokens": decoded,
        "wall_s": wall,
        "tokens_per_second": decoded / wall if wall > 0 else None,
        # per sequence, as GenerationResult.tokens_per_forward (each sequence counts its own forwards)
        "tokens_per_forward": float(np.mean([r.tokens_per_forward for r in results])),
        "tokens_per_forward_batch": decoded / max(forwards, 1),  # all tokens / all forward calls
        "latency_ms_per_request": summary_ms([r.wall_s for r in requests]),
        "time_to_first_block_ms": summary_ms([r.first_block_s for r in requests if r.first_block_s is not None]),
        "forward_latency_ms": by_kind,
        "step_breakdown": breakdown,
    }
    out.update(score(results[:per_repeat], prompts))
    out["trace"] = [trace_of(req, res) for req, res in zip(requests[:per_repeat], results[:per_repeat])]
    return out


def score(results: list[GenerationResult], prompts: PromptSet) -> dict:
    """Exact match over the prompts with an answer (None without a tokenizer or answers)."""
    if prompts.tokenizer is None or not prompts.with_answers:
        return {"exact_match": None, "scored": 0, "predictions": None}
    preds = [prompts.tokenizer.decode(t) for r in results for t in r.tokens]
    pairs = [(p, a) for p, a in zip(preds, prompts.answers or []) if a is not None]
    hits = sum(p.strip() == a.strip() for p, a in pairs)
    return {"exact_match": hits / len(pairs), "scored": len(pairs), "predictions": preds}


def trace_of(req: RequestTiming, res: GenerationResult) -> dict:
    """Per step of one request: the decode record and its timings (ms)."""
    steps = []
    for s, r in zip(req.steps, res.steps):
        steps.append({"kind": r.kind, "query_len": r.query_len, "past_len": r.past_len,
                      "unmasked": int(sum(r.unmasked)), "live": int(sum(r.live)),
                      "forward_ms": s.forward_s * 1e3, "model_ms": s.model_s * 1e3, "cache_ms": s.cache_s * 1e3,
                      "unmask_ms": s.unmask_s * 1e3, "host_ms": s.host_s * 1e3, "step_ms": s.step_s * 1e3})
    return {"wall_ms": req.wall_s * 1e3, "setup_ms": req.setup_s * 1e3,
            "first_block_ms": None if req.first_block_s is None else req.first_block_s * 1e3,
            "nfe": res.nfe, "decoded_tokens": res.decoded_tokens, "tokens_per_forward": res.tokens_per_forward,
            "steps": steps}


def settings_dict(gen: GenerationConfig) -> dict:
    return dataclasses.asdict(gen)
