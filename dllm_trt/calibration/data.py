"""Calibration batches that look like what the runtime feeds the graph (``dllm-trt calibrate``).

A masked diffusion LM never sees clean text at inference: every forward holds the prompt,
the tokens decoded so far and a run of ``[MASK]`` tokens, in the block layout of the decode
strategy. Calibrating on plain text (the autoregressive habit) measures activations the model
never produces while decoding; the mask token's own embedding and the attention of masked
positions go unseen. So each calibration example (prompt, answer) becomes, for every mask
ratio ``r``, one row shaped like a real decoding step:

bidirectional families (LLaDA, Dream), semi-autoregressive blocks of ``block_length``
  prompt | earlier blocks clean | current block with round(r * block_length) masked positions
  (chosen at random) | later blocks fully masked. The current block is drawn at random.
  Bidirectional bias over the whole sequence (the ``none`` cache forward).
block diffusion (Fast-dLLM v2 / SDAR), blocks of ``bd_size`` at absolute positions
  prompt and earlier blocks clean | current block, whose maskable positions (the answer's,
  except a block's first position, which the runtime reads autoregressively) are masked at
  ratio r the way the sub-block loop leaves them: later sub-blocks fully masked, the current
  sub-block partly masked at random. The sequence ends with the current block (nothing after
  it exists yet); block-causal bias. The current block is drawn among the answer's blocks.

The answer region is the answer followed by EOS padding up to ``gen_length`` (from the
generation defaults), as in training. ``plain=True`` gives the contrast: prompt + answer +
EOS, unmasked, with the model's own attention layout.

Rows are padded to one length T and stored as complete graph feeds (``input_ids``,
``position_ids``, ``attention_bias [N, 1, T, T]``, empty ``past_key_values.*``) plus
bookkeeping arrays, in an ``.npz`` written with ``np.savez`` (no pickle; load with
``allow_pickle=False``). Padding rows follow the runtime: padded positions hold the mask
token at position 0 and attend to every valid key; ``valid`` marks the real tokens.
Torch-free: numpy, tokenizers and the standard library.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..config import ModelConfig
from ..atomic import write_file
from ..errors import DllmError
from ..runtime.layout import attention_bias
from ..runtime.settings import GenerationConfig, folder_generation_defaults
from ..runtime.tokenizer import TextTokenizer
from ..tasks import Example, make_examples

CALIB_FORMAT = "dllm-trt calibration"
CALIB_VERSION = 1
DEFAULT_RATIOS = (0.25, 0.5, 0.75, 1.0)
BUILTIN_SEED = 2024  # the tiny checkpoints train on seed 1 and are scored on seed 12345
EVAL_SEED, EVAL_HELD_OUT = 12345, 1000
_KV_NUMPY = {"fp32": np.float32, "fp16": np.float16, "bf16": np.float32}  # bf16 graphs take uint16 bits; see feeds()


# ---------------------------------------------------------------------- the model folder
@dataclass
class ModelInfo:
    """What calibration needs to know about a checkpoint or an export folder."""

    path: Path
    config: ModelConfig
    generation: dict[str, Any]
    dtype: str  # fp32 | fp16 | bf16 (the K/V dtype of the graph)
    is_export: bool


def read_model_info(model_dir: str | Path) -> ModelInfo:
    """A checkpoint folder (config.json + generation_config.json / dllm_generation.json) or an export (dllm_config.json)."""
    from ..contract import CONFIG_FILE, config_from_artifact, read_artifact_config

    d = Path(model_dir)
    if not d.is_dir():
        raise DllmError(f"model folder {d} does not exist; pass a checkpoint folder or a `dllm-trt export` folder")
    defaults = dataclasses.asdict(GenerationConfig())
    if (d / CONFIG_FILE).is_file():
        meta = read_artifact_config(d)
        config = config_from_artifact(meta, source=str(d / CONFIG_FILE))
        defaults.update(folder_generation_defaults(d))
        return ModelInfo(d, config, defaults, meta["dtype"], True)
    config = ModelConfig.from_pretrained(d)
    defaults.update(folder_generation_defaults(d))
    dtype = {"float16": "fp16", "bfloat16": "bf16"}.get(str(config.extra.get("torch_dtype", "float32")), "fp32")
    return ModelInfo(d, config, defaults, dtype, False)


# ---------------------------------------------------------------------- examples
def builtin_examples(n: int, seed: int = BUILTIN_SEED) -> list[Example]:
    """Task prompts (dllm_trt.tasks) disjoint from the held-out evaluation prompts."""
    held_out = {e.prompt for e in make_examples(EVAL_HELD_OUT, EVAL_SEED)}
    out: list[Example] = []
    pool_seed = seed
    while len(out) < n:
        out += [e for e in make_examples(4 * n, pool_seed) if e.prompt not in held_out]
        pool_seed += 7919
    return out[:n]


def read_examples(data: str | Path, n: int | None, tok: TextTokenizer, gen_length: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) pairs from ``builtin`` or a JSONL file.

    JSONL lines are ``{"prompt": ..., "answer": ...}``, or ``{"text": ...}``: then the last
    min(gen_length, half of the tokens) tokens are the answer and the rest the prompt.
    """
    if str(data) == "builtin":
        exs = builtin_examples(n or 128)
        return [(tok.encode(e.prompt), tok.encode(e.answer)) for e in exs]
    path = Path(data)
    if not path.is_file():
        raise DllmError(f"calibration data {path} does not exist; pass a JSONL file of "
                        '{"prompt": ..., "answer": ...} (or {"text": ...}) lines, or `builtin`')
    pairs = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise DllmError(f"{path}:{i} is not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise DllmError(f"{path}:{i}: expected a JSON object")
        fields = {k: d[k] for k in ("prompt", "answer", "text") if k in d}
        bad = next((k for k, v in fields.items() if not isinstance(v, str)), None)
        if bad is not None:  # str() would calibrate on "['a', 'b']" or "None"
            raise DllmError(f'{path}:{i}: "{bad}" must be a string (got {type(d[bad]).__name__})')
        if "prompt" in d:
            p, a = tok.encode(d["prompt"]), tok.encode(d.get("answer", ""))
        elif "text" in d:
            ids = tok.encode(d["text"])
            cut = len(ids) - min(gen_length, len(ids) // 2)
            p, a = ids[:cut], ids[cut:]
        else:
            raise DllmError(f'{path}:{i}: a line needs "prompt" (and "answer") or "text"')
        if not p:
            continue
        pairs.append((p, a))
        if n is not None and len(pairs) >= n:
            break
    if not pairs:
        raise DllmError(f"{path} holds no usable examples (each needs a non-empty prompt)")
    return pairs


# ---------------------------------------------------------------------- rows
@dataclass
class Row:
    ids: list[int]
    masked: list[bool]
    prompt_len: int
    ratio: float
    current: tuple[int, int]  # [start, end) of the block being denoised (plain: the answer region)
    sample: int


def parse_ratios(text: str | None) -> tuple[float, ...]:
    if text is None:
        return DEFAULT_RATIOS
    try:
        ratios = tuple(float(x) for x in str(text).split(",") if x.strip())
    except ValueError as e:
        raise DllmError(f"--mask-ratios {text!r}: give comma-separated numbers in (0, 1], e.g. 0.25,0.5,0.75,1.0") from e
    if not ratios or any(not 0.0 < r <= 1.0 for r in ratios):
        raise DllmError(f"--mask-ratios {text!r}: every ratio must be in (0, 1]")
    return ratios


def _answer_region(answer: list[int], gen_length: int, eos: int) -> list[int]:
    ans = answer[: gen_length - 1] if gen_length > 1 else answer[:gen_length]
    return ans + [eos] * (gen_length - len(ans))


def _n_masked(ratio: float, count: int) -> int:
    return min(count, max(1, int(round(ratio * count)))) if count else 0


def semi_ar_rows(prompt: list[int], answer: list[int], ratios, info: ModelInfo, rng: np.random.Generator,
                 sample: int) -> list[Row]:
    cfg, g = info.config, info.generation
    gen_length, block = int(g["gen_length"]), int(g["block_length"])
    if block <= 0 or gen_length % block:
        raise DllmError(f"generation defaults: gen_length {gen_length} is not a multiple of block_length {block}")
    eos, mask = cfg.eos_token_ids[0], cfg.mask_token_id
    x0 = prompt + _answer_region(answer, gen_length, eos)
    p = len(prompt)
    rows = []
    for r in ratios:
        k = int(rng.integers(gen_length // block))
        s, e = p + k * block, p + (k + 1) * block
        masked = np.zeros(len(x0), bool)
        masked[e:] = True
        chosen = rng.choice(block, _n_masked(r, block), replace=False)
        masked[s + chosen] = True
        ids = np.where(masked, mask, x0).tolist()
        rows.append(Row(ids, masked.tolist(), p, r, (s, e), sample))
    return rows


def block_rows(prompt: list[int], answer: list[int], ratios, info: ModelInfo, rng: np.random.Generator,
               sample: int) -> list[Row]:
    cfg, g = info.config, info.generation
    bs, sb = int(cfg.block_size), int(g["sub_block_length"])
    if sb <= 0 or bs % sb:
        sb = bs
    gen_length = int(g["gen_length"])
    eos, mask = cfg.eos_token_ids[0], cfg.mask_token_id
    p = len(prompt)
    region = _answer_region(answer, gen_length, eos)
    first_eos = p + min(len(answer), gen_length - 1)  # the runtime stops after the block holding it
    blocks = list(range(p // bs, first_eos // bs + 1))
    rows = []
    for r in ratios:
        k = blocks[int(rng.integers(len(blocks)))]
        s, e = k * bs, (k + 1) * bs
        x0 = (prompt + region + [eos] * bs)[:e]
        pos = np.arange(s, e)
        maskable = pos[(pos >= p) & (pos % bs != 0)]
        if maskable.size == 0:  # a one-position block: nothing the runtime would mask
            continue
        todo = _n_masked(r, maskable.size)
        masked = np.zeros(e, bool)
        # The sub-block loop leaves later sub-blocks fully masked and the current one partly.
        for j in reversed(range(bs // sb)):
            sub = maskable[(maskable >= s + j * sb) & (maskable < s + (j + 1) * sb)]
            if todo >= sub.size:
                masked[sub] = True
                todo -= sub.size
            else:
                masked[rng.choice(sub, todo, replace=False)] = True
                todo = 0
            if todo == 0:
                break
        ids = np.where(masked, mask, x0).tolist()
        rows.append(Row(ids, masked.tolist(), p, r, (s, e), sample))
    return rows


def plain_rows(prompt: list[int], answer: list[int], info: ModelInfo, sample: int) -> list[Row]:
    eos = info.config.eos_token_ids[0]
    ids = prompt + answer[: int(info.generation["gen_length"]) - 1] + [eos]
    return [Row(ids, [False] * len(ids), len(prompt), 0.0, (len(prompt), len(ids)), sample)]


# ---------------------------------------------------------------------- the set
class CalibrationSet:
    """Arrays of one calibration file; ``feeds()`` yields ONNX Runtime feed dicts."""

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]):
        self.arrays, self.meta = arrays, meta

    def __len__(self) -> int:
        return int(self.arrays["input_ids"].shape[0])

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def input_names(self) -> list[str]:
        return list(self.meta["input_names"])

    def batches(self, batch_size: int = 32) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """(feeds, row indices) per batch. Rows of one batch have the same length, so the graph
        sees no padding at all and every activation it produces belongs to a real token."""
        a = self.arrays
        lengths = a["valid"].sum(axis=1)
        for t in np.unique(lengths):
            idx = np.flatnonzero(lengths == t)
            t = int(t)
            for j in range(0, idx.size, batch_size):
                rows = idx[j: j + batch_size]
                feeds = {"input_ids": a["input_ids"][rows, :t],
                         "position_ids": a["position_ids"][rows, :t],
                         "attention_bias": np.ascontiguousarray(a["attention_bias"][rows][:, :, :t, :t]),
                         # every row's logits (the LM head's activations are calibrated on all of them)
                         "logits_index": np.broadcast_to(np.arange(t, dtype=np.int64), (rows.size, t)).copy()}
                for name in self.input_names:
                    if name.startswith("past_key_values."):
                        feeds[name] = a[name][rows]
                yield feeds, rows

    def feeds(self, batch_size: int = 32, input_types: dict[str, str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Feed dicts; ``input_types`` (ORT type strings by input name) casts the empty pasts to the graph's dtype."""
        for feeds, _ in self.batches(batch_size):
            if input_types:
                for name, t in input_types.items():
                    if name in feeds and t == "tensor(float16)":
                        feeds[name] = feeds[name].astype(np.float16)
                    elif name in feeds and t == "tensor(bfloat16)":
                        feeds[name] = feeds[name].astype(np.uint16)
            yield feeds

    def check_model(self, config: ModelConfig, where: str = "the model") -> None:
        """Refuse a calibration file made for another model (layer count, heads, mask id, layout)."""
        m = self.meta
        want = {"num_layers": config.num_layers, "num_kv_heads": config.num_kv_heads, "head_dim": config.head_dim,
                "mask_token_id": config.mask_token_id, "attention": config.attention,
                "block_size": config.block_size, "vocab_size": config.vocab_size}
        bad = [f"{k} {m.get(k)!r} vs {v!r}" for k, v in want.items() if m.get(k) != v]
        if bad:
            raise DllmError(f"the calibration file was made for another model ({m.get('model_type')}, from "
                            f"{m.get('model')}): {', '.join(bad)} ({where}); run `dllm-trt calibrate --model` "
                            "on this model")


def build_calibration(model_dir: str | Path, data: str | Path = "builtin", samples: int | None = 128,
                      mask_ratios=DEFAULT_RATIOS, plain: bool = False, seed: int = 0) -> CalibrationSet:
    """Calibration rows for ``model_dir`` (checkpoint or export folder), masked or ``plain``."""
    info = read_model_info(model_dir)
    cfg = info.config
    tok = TextTokenizer(info.path)
    ratios = tuple(parse_ratios(mask_ratios) if isinstance(mask_ratios, str) else mask_ratios)
    if not plain and (not ratios or any(not 0.0 < r <= 1.0 for r in ratios)):
        raise DllmError(f"mask ratios {ratios}: every ratio must be in (0, 1]")
    if samples is not None and samples <= 0:
        raise DllmError("--samples must be positive")
    pairs = read_examples(data, samples, tok, int(info.generation["gen_length"]))
    rng = np.random.default_rng(seed)
    rows: list[Row] = []
    for i, (p, a) in enumerate(pairs):
        if plain:
            rows += plain_rows(p, a, info, i)
        elif cfg.attention == "block_causal":
            rows += block_rows(p, a, ratios, info, rng, i)
        else:
            rows += semi_ar_rows(p, a, ratios, info, rng, i)
    if not rows:
        raise DllmError("no calibration rows could be built from the data")
    longest = max(len(r.ids) for r in rows)
    if longest > cfg.max_position_embeddings:
        raise DllmError(f"a calibration row needs {longest} positions, more than the model's "
                        f"{cfg.max_position_embeddings}; use shorter examples")
    arrays = _pack(rows, info, longest)
    from ..contract import input_names

    meta = {
        "format": CALIB_FORMAT, "version": CALIB_VERSION, "kind": "plain" if plain else "masked",
        "model": str(info.path), "model_type": cfg.model_type, "family": cfg.family, "attention": cfg.attention,
        "block_size": cfg.block_size, "mask_token_id": cfg.mask_token_id, "eos_token_ids": list(cfg.eos_token_ids),
        "vocab_size": cfg.vocab_size, "num_layers": cfg.num_layers, "num_kv_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim, "kv_dtype": info.dtype,
        "gen_length": int(info.generation["gen_length"]), "block_length": int(info.generation["block_length"]),
        "sub_block_length": int(info.generation["sub_block_length"]),
        "mask_ratios": [] if plain else list(ratios), "samples": len(pairs), "rows": len(rows), "seed": seed,
        "data": str(data), "input_names": input_names(cfg.num_layers),
        "masked_fraction_of_answer": _masked_fraction(rows),
    }
    return CalibrationSet(arrays, meta)


def _masked_fraction(rows: list[Row]) -> float:
    gen = sum(len(r.ids) - r.prompt_len for r in rows)
    return round(sum(sum(r.masked) for r in rows) / max(gen, 1), 4)


def _pack(rows: list[Row], info: ModelInfo, t: int) -> dict[str, np.ndarray]:
    cfg = info.config
    n = len(rows)
    ids = np.full((n, t), cfg.mask_token_id, np.int64)
    masked = np.zeros((n, t), bool)
    valid = np.zeros((n, t), bool)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = r.ids
        masked[i, : len(r.ids)] = r.masked
        valid[i, : len(r.ids)] = True
    pos = np.where(valid, np.arange(t)[None, :], 0).astype(np.int64)
    block = cfg.block_size if cfg.attention == "block_causal" else None
    bias = attention_bias(pos, valid, np.zeros((n, 0), bool), block)
    arrays = {"input_ids": ids, "position_ids": pos, "attention_bias": bias}
    empty = np.zeros((n, cfg.num_kv_heads, 0, cfg.head_dim), _KV_NUMPY.get(info.dtype, np.float32))
    from ..contract import past_names

    for name in past_names(cfg.num_layers):
        arrays[name] = empty
    arrays.update({
        "valid": valid, "masked": masked,
        "prompt_len": np.array([r.prompt_len for r in rows], np.int64),
        "mask_ratio": np.array([r.ratio for r in rows], np.float32),
        "current": np.array([r.current for r in rows], np.int64).reshape(n, 2),
        "sample": np.array([r.sample for r in rows], np.int64),
    })
    return arrays


# ---------------------------------------------------------------------- files
def save_calibration(calib: CalibrationSet, path: str | Path) -> dict[str, Any]:
    """Write the ``.npz`` (np.savez, no pickle) atomically; returns a summary."""
    path = Path(path)
    if path.suffix != ".npz":
        raise DllmError(f"--out {path}: the calibration file must end in .npz")
    arrays = dict(calib.arrays)
    arrays["meta"] = np.array(json.dumps(calib.meta))  # a 0-d unicode array: loads without pickle

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a path
            np.savez(f, **arrays)

    write_file(path, write)
    return {"out": str(path), "bytes": path.stat().st_size, "sha256": file_sha256(path), **summary(calib)}


def summary(calib: CalibrationSet) -> dict[str, Any]:
    m = calib.meta
    return {"kind": m["kind"], "model_type": m["model_type"], "samples": m["samples"], "rows": m["rows"],
            "mask_ratios": m["mask_ratios"], "max_len": int(calib.arrays["input_ids"].shape[1]),
            "masked_fraction_of_answer": m["masked_fraction_of_answer"]}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_calibration(path: str | Path) -> CalibrationSet:
    """Read a file written by ``save_calibration`` (``allow_pickle=False``); checks the format."""
    path = Path(path)
    make = "make one with `dllm-trt calibrate --model DIR --data builtin --out FILE.npz`"
    if path.is_dir():
        raise DllmError(f"calibration file {path} is a folder; pass the .npz file (or {make})")
    if not path.is_file():
        raise DllmError(f"calibration file {path} does not exist; {make}")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # an .npz is a zip; numpy would call anything else "pickled data"
            raise DllmError(f"{path} is not an .npz (zip) file; pass the file `dllm-trt calibrate` wrote, or {make}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile / ValueError on a broken or pickled file
        raise DllmError(f"{path} is not a readable calibration .npz ({e}); re-run `dllm-trt calibrate`") from e
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (KeyError, json.JSONDecodeError) as e:
        raise DllmError(f"{path} has no calibration metadata; it was not written by `dllm-trt calibrate`") from e
    if meta.get("format") != CALIB_FORMAT or meta.get("version") != CALIB_VERSION:
        raise DllmError(f"{path} is format {meta.get('format')!r} v{meta.get('version')!r}; this dllm-trt reads "
                        f"{CALIB_FORMAT!r} v{CALIB_VERSION}: re-run `dllm-trt calibrate`")
    # logits_index is not stored: batches() derives it (every row of the batch's length)
    missing = [k for k in meta["input_names"] + ["valid", "masked"] if k not in arrays and k != "logits_index"]
    if missing:
        raise DllmError(f"{path} lacks {', '.join(missing[:4])}; re-run `dllm-trt calibrate`")
    return CalibrationSet(arrays, meta)
