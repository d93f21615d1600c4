"""A bounded load generator over the official ``openai`` client (AsyncOpenAI): N requests at a fixed
concurrency, streaming, latency percentiles and tokens/s. Shared by the load test and
benchmarks/serve_load.py."""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass, field


def task_prompts(n: int, seed: int = 0) -> list[str]:
    """Prompts of the bundled tiny checkpoints' synthetic tasks (add / rev / sort), reproducible."""
    rng = random.Random(seed)
    words = ["kernel", "tensorrt", "diffusion", "block", "cache", "engine", "serve", "batch", "token", "onnx"]
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out.append(f"add:{rng.randint(1, 999)}+{rng.randint(1, 999)}=")
        elif kind == 1:
            out.append(f"rev:{rng.choice(words)}=")
        else:
            out.append(f"sort:{rng.choice(words)}=")
    return out


def id_prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """Random token-id prompts (for exports without a tokenizer), ids 2..vocab-1 (0/1: EOS/mask on the
    bundled models; real models' special ids are rare at random)."""
    rng = random.Random(seed)
    return [[rng.randrange(2, vocab) for _ in range(length)] for _ in range(n)]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    completion_tokens: int
    latencies: list[float] = field(default_factory=list, repr=False)
    first_token: list[float] = field(default_factory=list, repr=False)
    error_messages: list[str] = field(default_factory=list, repr=False)
    texts: list[str | None] = field(default_factory=list, repr=False)

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("latencies", "first_token", "error_messages", "texts")}
        d.update(p50_s=percentile(self.latencies, 50), p99_s=percentile(self.latencies, 99),
                 ttft_p50_s=percentile(self.first_token, 50), tokens_per_second=self.tokens_per_second,
                 requests_per_second=self.requests / self.seconds if self.seconds > 0 else 0.0)
        return d


async def run_load(base_url: str, model: str, prompts: list[str] | list[list[int]], concurrency: int,
                   max_tokens: int | list[int] = 16, temperature: float = 0.0, timeout: float = 300.0) -> LoadResult:
    """Send every prompt (streaming /v1/completions), at most ``concurrency`` in flight."""
    import httpx
    from openai import AsyncOpenAI

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    client = AsyncOpenAI(base_url=base_url.rstrip("/") + "/v1", api_key="dllm-trt", max_retries=0, timeout=timeout,
                         http_client=httpx.AsyncClient(limits=limits, timeout=timeout))
    sem = asyncio.Semaphore(concurrency)
    lengths = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts)
    res = LoadResult(concurrency, len(prompts), 0, 0.0, 0, texts=[None] * len(prompts))

    async def one(i: int) -> None:
        async with sem:
            t0 = time.perf_counter()
            first = None
            parts: list[str] = []
            try:
                stream = await client.completions.create(model=model, prompt=prompts[i], max_tokens=lengths[i],
                                                         temperature=temperature, stream=True,
                                                         stream_options={"include_usage": True})
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].text:
                        if first is None:
                            first = time.perf_counter() - t0
                        parts.append(chunk.choices[0].text)
                    if chunk.usage is not None:
                        res.completion_tokens += chunk.usage.completion_tokens
            except Exception as e:  # counted, not raised: the load test reports every failure
                res.errors += 1
                res.error_messages.append(f"{type(e).__name__}: {e}")
                return
            res.latencies.append(time.perf_counter() - t0)
            res.first_token.append(first if first is not None else time.perf_counter() - t0)
            res.texts[i] = "".join(parts)

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(one(i) for i in range(len(prompts))))
    finally:
        await client.close()
    res.seconds = time.perf_counter() - t0
    return res


def run_load_sync(*args, **kwargs) -> LoadResult:
    return asyncio.run(run_load(*args, **kwargs))
