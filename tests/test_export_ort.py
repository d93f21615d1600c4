"""Export to ONNX and the ONNX Runtime backend (issue #3).

Tiny random models of every family are exported once per module; the tests check the graph
(onnx.checker + full shape inference), the artefact (dllm_config.json round trip, errors), the
ORT-vs-torch numbers, and that ``generate()`` on ORT gives token-for-token the torch reference
for every strategy and cache mode. Trained tiny checkpoints in samples/checkpoints/ are added
to the token-equality matrix when they exist.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from conftest import RecordingBackend  # noqa: E402
from dllm_trt.config import ModelConfig  # noqa: E402
from dllm_trt.errors import DllmError  # noqa: E402
from dllm_trt.export import export_onnx  # noqa: E402
from dllm_trt.models import build_model, save_model  # noqa: E402
from dllm_trt.runtime import GenerationConfig, TextTokenizer, generate  # noqa: E402
from dllm_trt.runtime.backends import load_backend  # noqa: E402
from dllm_trt.contract import (CONFIG_FILE, EXTERNAL_DATA_FILE, FORMAT_VERSION, MODEL_FILE,  # noqa: E402
                               input_names, output_names)
from dllm_trt.runtime.backends.ort_backend import OrtBackend  # noqa: E402
from dllm_trt.runtime.backends.torch_backend import TorchBackend  # noqa: E402
from dllm_trt.runtime.layout import attention_bias  # noqa: E402
from dllm_trt.runtime.settings import CACHE_MODES, STRATEGIES, STRATEGIES_FOR, cache_modes_for  # noqa: E402
from dllm_trt.tasks import build_tokenizer_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("llada", "dream", "block_diffusion", "sdar")
TRAINED = [REPO / "samples" / "checkpoints" / n for n in ("llada-tiny", "dream-tiny", "bd-tiny")]
PROMPTS = [[5, 9, 12, 7, 30], [11, 4, 8, 20, 21, 22, 3, 17, 6]]  # two lengths, ids >= 3 (no EOS/mask/unk)


def raw_config(variant: str) -> dict:
    """Upstream config.json keys of a tiny model (vocabulary of the task tokenizer: 42, EOS 0, mask 1)."""
    if variant == "llada":
        return {"model_type": "llada", "d_model": 32, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2,
                "mlp_hidden_size": 64, "vocab_size": 42, "embedding_size": 48, "rope_theta": 10000.0,
                "rms_norm_eps": 1e-5, "weight_tying": False, "mask_token_id": 1, "eos_token_id": 0,
                "pad_token_id": 0, "max_sequence_length": 64}
    raw = {"model_type": {"dream": "Dream", "block_diffusion": "Fast_dLLM_Qwen", "sdar": "sdar"}[variant],
           "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
           "intermediate_size": 64, "vocab_size": 42, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
           "tie_word_embeddings": variant == "sdar", "mask_token_id": 1, "eos_token_id": 0, "pad_token_id": 0,
           "max_position_embeddings": 64}
    if variant == "block_diffusion":
        raw["bd_size"] = 8
    if variant == "sdar":  # Qwen3 layout: q_norm/k_norm, no q/k/v bias, head_dim given (here != hidden / heads)
        raw.update(block_size=8, head_dim=16, attention_bias=False)
    return raw


def lm_head(model) -> torch.Tensor:
    c = model.config
    if c.family == "llada":
        t = model.model.transformer
        return t.wte.weight if c.tie_word_embeddings else t.ff_out.weight
    return model.model.embed_tokens.weight if c.tie_word_embeddings else model.lm_head.weight


def sharpened_model(variant: str, seed: int = 0, **raw_overrides):
    """A random tiny model with a sharpened LM head (random heads give near-uniform, tie-prone softmax);
    ``raw_overrides`` replace config.json keys of ``raw_config``."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig.from_dict({**raw_config(variant), **raw_overrides})).eval()
    with torch.no_grad():
        lm_head(model).mul_(4.0)
    return model


def make_checkpoint(path: Path, variant: str, seed: int = 0, **raw_overrides) -> Path:
    """``sharpened_model`` saved with the task tokenizer and generation settings."""
    model = sharpened_model(variant, seed, **raw_overrides)
    gen = {"gen_length": 16, "block_length": 8, "steps": 16, "strategy": "low_confidence"}
    save_model(model, path, extra_files={"tokenizer.json": build_tokenizer_json(),
                                         "generation_config.json": json.dumps({"eos_token_id": 0}),
                                         "dllm_generation.json": json.dumps(gen)})
    return path


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models: torch's OpenMP threads only add barrier waits (seconds per forward on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Factory ``exported(variant, **export_kwargs) -> (checkpoint_dir, artefact_dir, report)``, cached."""
    made: dict = {}

    def make(variant: str, **kwargs):
        key = (variant, tuple(sorted(kwargs.items())))
        if key not in made:
            root = tmp_path_factory.mktemp(f"exp-{variant}")
            ckpt = make_checkpoint(root / "ckpt", variant)
            report = export_onnx(ckpt, root / "artefact", progress=False, log=lambda s: None, **kwargs)
            made[key] = (ckpt, root / "artefact", report)
        return made[key]

    return make


@pytest.fixture(scope="module")
def backends(exported):
    """Factory ``backends(variant) -> (TorchBackend, OrtBackend host path, OrtBackend bound path)``."""
    made: dict = {}

    def make(variant: str):
        if variant not in made:
            ckpt, art, _ = exported(variant)
            made[variant] = (TorchBackend.from_pretrained(str(ckpt)), OrtBackend.from_pretrained(art),
                             OrtBackend.from_pretrained(art, io_binding=True))
        return made[variant]

    return make


def gen_config(strategy: str, cache: str, **kw) -> GenerationConfig:
    base = dict(gen_length=16, block_length=8, steps=16, sub_block_length=4, seed=3, threshold=0.6, factor=1.0)
    return GenerationConfig(**dict(base, strategy=strategy, cache=cache, **kw))


def assert_same_run(ref, got, label: str) -> None:
    assert got.tokens == ref.tokens, f"{label}: ORT tokens differ from torch"
    assert got.nfe == ref.nfe, label
    assert [(s.kind, s.query_len, s.past_len, s.unmasked) for s in got.steps] == \
        [(s.kind, s.query_len, s.past_len, s.unmasked) for s in ref.steps], label


def cache_modes(variant: str) -> tuple[str, ...]:
    return CACHE_MODES["block_causal" if variant in ("block_diffusion", "sdar") else "bidirectional"]


# ---------------------------------------------------------------------- the graph and the artefact
@pytest.mark.parametrize("variant", VARIANTS)
def test_graph_passes_checker_shape_inference_and_contract(exported, variant, tmp_path):
    ckpt, art, report = exported(variant)
    path = art / MODEL_FILE
    onnx.checker.check_model(str(path), full_check=True)
    onnx.shape_inference.infer_shapes_path(str(path), str(tmp_path / "inferred.onnx"), check_type=True,
                                           strict_mode=True, data_prop=True)
    cfg = ModelConfig.from_pretrained(ckpt)
    model = onnx.load(str(path), load_external_data=False)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(model.graph.input) + list(model.graph.output)}
    # the contract spelled out (not the generator's own input_names/output_names, which would agree with any bug)
    kv = lambda p: [f"{p}.{i}.{x}" for i in range(cfg.num_layers) for x in ("key", "value")]  # noqa: E731
    assert [i.name for i in model.graph.input] == (["input_ids", "position_ids", "attention_bias"] + kv("past_key_values")
                                                   + ["logits_index"])
    assert [o.name for o in model.graph.output] == ["tokens", "confidence", "margin", "neg_entropy", "logits"] + \
        kv("present")
    assert cfg.num_layers >= 2 and model.graph.input[4].name == "past_key_values.0.value"
    assert dims["input_ids"] == ["batch", "query_len"]
    assert dims["attention_bias"] == ["batch", 1, "query_len", "key_len"]
    assert dims["past_key_values.0.key"] == ["batch", cfg.num_kv_heads, "past_len", cfg.head_dim]
    assert dims["present.1.value"] == ["batch", cfg.num_kv_heads, "query_len", cfg.head_dim]
    assert dims["logits_index"] == ["batch", "rows"]
    assert dims["tokens"] == dims["confidence"] == dims["margin"] == dims["neg_entropy"] == ["batch", "rows"]
    assert dims["logits"] == ["batch", "rows", cfg.vocab_size]
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    assert types["logits_index"] == types["tokens"] == onnx.TensorProto.INT64
    assert types["confidence"] == types["margin"] == types["neg_entropy"] == types["logits"] == onnx.TensorProto.FLOAT
    # the selection head: ArgMax + gather, Exp, ReduceSum; never a ReduceMax/ReduceMin (8 ms per step over a
    # 126k vocabulary on ONNX Runtime's CUDA provider)
    ops = {n.op_type for n in model.graph.node}
    assert {"ArgMax", "GatherElements", "ReduceSum"} <= ops and not ops & {"ReduceMax", "ReduceMin"}
    # no Cast of a Cast to the same type (the exporter's second `.float()` of the logits copied B x R x V floats)
    produced = {o: n for n in model.graph.node for o in n.output}
    to = lambda n: next(a.i for a in n.attribute if a.name == "to")  # noqa: E731
    assert not [n.name for n in model.graph.node if n.op_type == "Cast" and n.input[0] in produced
                and produced[n.input[0]].op_type == "Cast" and to(produced[n.input[0]]) == to(n)]

    meta = json.loads((art / CONFIG_FILE).read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["dllm_trt_version"]
    assert ModelConfig.from_dict(meta["hf_config"]) == cfg  # the ModelConfig round-trips
    assert meta["model_config"]["logits_shift"] == cfg.logits_shift
    assert meta["model_config"]["block_size"] == cfg.block_size
    assert meta["cache"]["layout"].startswith("per-layer K/V [B, Hkv, C, D]")
    assert meta["tokenizer"] == "tokenizer.json" and (art / "tokenizer.json").is_file()
    assert (art / "generation_config.json").is_file() and (art / "dllm_generation.json").is_file()
    assert meta["generation_sources"] == ["generation_config.json", "dllm_generation.json"]
    assert meta["generation_defaults"]["gen_length"] == 16
    assert meta["generation_defaults"]["cache"] in cache_modes(variant)
    assert meta["external_data"] is None and not (art / EXTERNAL_DATA_FILE).exists()
    assert {i["name"]: i["dtype"] for i in meta["inputs"]}["position_ids"] == "int64"
    v = meta["validation"]
    assert v["status"] == "passed" and v == report["validation"]
    # 32 positions (tiny test models allow 128): a 29-token prefill, 13 rows over a 19-position past
    assert [(c["query_len"], c["past_len"]) for c in v["cases"]] == [(29, 0), (13, 19)]
    assert [c["rows"] for c in v["cases"]] == [29, 13]  # every row of the window read and compared
    for case in v["cases"]:
        assert case["logits_max_rel"] <= 1e-4 and case["present_max_rel"] <= 1e-4, case
        assert case["confidence_max_abs"] <= 1e-4 and case["tokens_differing"] == 0, case
        assert case["rows"] >= 1 and case["tokens_compared"] > 0, case
    assert OrtBackend.from_pretrained(art).config == cfg


@pytest.mark.parametrize("variant", ["llada", "block_diffusion"])
@pytest.mark.parametrize("io_binding", [False, True], ids=["host", "bound"])
def test_forward_and_cache_writes_match_torch(backends, variant, io_binding):
    """P = 0 and P = C forwards, odd batch/query sizes, rows read in any order, writes at positions;
    tokens, confidences and logits of the read rows, then the cache contents."""
    tb, oh, ob = backends(variant)
    ob = ob if io_binding else oh
    cfg = tb.config
    rng = np.random.default_rng(0)
    B, cap = 3, 24
    tc, oc = tb.allocate_cache(B, cap), ob.allocate_cache(B, cap)
    assert tc.capacity == cap and oc.capacity >= cap  # the bound path rounds up
    written = np.zeros((B, oc.capacity), bool)
    for start, L, R, past in [(0, 11, 11, False), (11, 5, 3, True), (16, 1, 1, True), (0, 2, 2, False)]:
        pos = start + np.arange(L)[None].repeat(B, 0)
        valid = np.ones((B, L), bool)
        valid[1, L - 1:] = False  # a padding query
        ids = rng.integers(0, cfg.vocab_size, (B, L))
        ids[rng.random((B, L)) < 0.3] = cfg.mask_token_id
        safe = np.where(valid, pos, 0)
        rows = np.stack([rng.permutation(L)[:R] for _ in range(B)]).astype(np.int64)
        for want_logits in (True, False):
            outs = []
            for be, cache in ((tb, tc), (ob, oc)):
                p = cache.capacity if past else 0
                past_valid = written[:, :p].copy()
                past_valid[1, max(0, start - 2):] = False  # stale entries of sequence 1
                bias = attention_bias(safe, valid, past_valid, cfg.block_size)
                outs.append(be.forward(ids, safe, bias, cache, p, valid if want_logits else None, rows, want_logits))
            want, got = outs
            assert got.tokens.shape == (B, R) and got.tokens.dtype == np.int64
            assert got.confidence.shape == (B, R) and got.confidence.dtype == np.float32
            np.testing.assert_array_equal(got.tokens, want.tokens)
            np.testing.assert_allclose(got.confidence, want.confidence, atol=1e-5)
            assert not (got.tokens == cfg.mask_token_id).any()
            if want_logits:
                assert got.logits.shape == (B, R, cfg.vocab_size) and got.logits.dtype == np.float32
                assert np.abs(got.logits - want.logits).max() / np.abs(want.logits).max() < 1e-4
                np.testing.assert_array_equal(got.tokens, np.where(np.arange(cfg.vocab_size) == cfg.mask_token_id,
                                                                   -np.inf, got.logits).argmax(-1))
            else:
                assert got.logits is None and want.logits is None
        written[np.arange(B)[:, None], pos] |= valid
    for (tk, tv), layer in zip(tc, oc):
        for t, o in ((tk, layer[0]), (tv, layer[1])):
            o = o if isinstance(o, np.ndarray) else o.host
            np.testing.assert_allclose(o[:, :, :cap], t.numpy(), atol=1e-5)


# ---------------------------------------------------------------------- token-for-token equality
@pytest.fixture(scope="module")
def reference(backends):
    """Factory ``reference(variant, gen, prompts=PROMPTS) -> GenerationResult`` of the torch backend, cached."""
    made: dict = {}

    def make(variant: str, g: GenerationConfig, prompts=PROMPTS):
        key = (variant, json.dumps(g.__dict__, sort_keys=True), json.dumps(prompts))
        if key not in made:
            made[key] = generate(backends(variant)[0], prompts, g)
        return made[key]

    return make


ATTENTION = {"llada": "bidirectional", "dream": "bidirectional", "block_diffusion": "block_causal",
             "sdar": "block_causal"}


@pytest.mark.parametrize("path", ["host", "bound"])
@pytest.mark.parametrize("variant,strategy", [(v, s) for v in VARIANTS for s in STRATEGIES
                                              if s in STRATEGIES_FOR[ATTENTION[v]]])
def test_generate_ort_equals_torch_every_strategy_and_cache(backends, reference, variant, strategy, path):
    """Token for token (and step for step) the PyTorch reference loop, on the ORT host path and on the
    bound path (the one CUDA uses: preallocated buckets, pooled caches, in-place scatter) run on host
    memory, for every strategy (random remasking with a fixed seed) and every cache mode."""
    _, oh, ob = backends(variant)
    be = oh if path == "host" else ob
    for cache in cache_modes_for(strategy, ATTENTION[variant]):
        g = gen_config(strategy, cache)
        assert_same_run(reference(variant, g), generate(be, PROMPTS, g), f"{variant}/{strategy}/{cache}/{path}")


def random_settings(cache: str) -> list[GenerationConfig]:
    """Random remasking, and sampling (temperature > 0, with top-k / top-p) under two strategies; fixed seeds."""
    return [gen_config("random", cache, seed=5),
            gen_config("low_confidence", cache, temperature=2.0, top_k=8, seed=7),
            gen_config("threshold", cache, temperature=1.5, top_p=0.95, seed=9)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_random_and_sampling_same_tokens_on_every_backend_and_alone(backends, reference, variant):
    """The counter-based random stream: torch, ORT host and ORT bound give the same tokens for random
    remasking and for sampling with a seed, and each prompt of the batch decodes alone to the same tokens."""
    _, oh, ob = backends(variant)
    sampled_differs = reseeded_differs = False
    for cache in cache_modes(variant):
        for g in random_settings(cache):
            label = f"{variant}/{cache}/{g.strategy}/T={g.temperature}"
            ref = reference(variant, g)
            for name, be in (("host", oh), ("bound", ob)):
                assert_same_run(ref, generate(be, PROMPTS, g), f"{label}/{name}")
            for b, prompt in enumerate(PROMPTS):
                alone = generate(oh, [prompt], g)
                assert alone.tokens[0] == ref.tokens[b], f"{label}: prompt {b} alone differs from the batch"
                assert alone.tokens[0] == reference(variant, g, [prompt]).tokens[0], label
            if g.temperature > 0:
                greedy = generate(oh, PROMPTS, gen_config(g.strategy, cache, seed=g.seed))
                sampled_differs |= greedy.tokens != ref.tokens
            else:  # random remasking: another seed, another order of unmasking
                seen = {}
                for seed in (g.seed, g.seed + 1):  # the forwards' inputs show the order of unmasking
                    rec = RecordingBackend(oh)
                    generate(rec, PROMPTS, gen_config("random", cache, seed=seed))
                    seen[seed] = [c[0].tolist() for c in rec.calls]
                reseeded_differs |= seen[g.seed] != seen[g.seed + 1]
    assert sampled_differs, "sampling gave the greedy tokens everywhere: it does not sample"
    assert reseeded_differs, "random remasking ignores the seed"


@pytest.mark.parametrize("ckpt", TRAINED, ids=[p.name for p in TRAINED])
def test_trained_checkpoints_ort_equals_torch(ckpt, tmp_path):
    assert (ckpt / "config.json").is_file(), f"bundled checkpoint {ckpt} is missing (it is part of the repository)"
    art = tmp_path / "artefact"
    export_onnx(ckpt, art, progress=False, log=lambda s: None)
    tb, ob = TorchBackend.from_pretrained(str(ckpt)), load_backend("ort", str(art))
    tok = TextTokenizer(art)
    prompts = [tok.encode(t) for t in ("add:12+345=", "rev:abcdef=", "sort:dcba=")]
    for strategy in STRATEGIES_FOR[tb.config.attention]:
        for cache in cache_modes_for(strategy, tb.config.attention):
            g = gen_config(strategy, cache, threshold=0.9)
            ref, got = generate(tb, prompts, g), generate(ob, prompts, g)
            if strategy == "freedave":
                # the same tokens; how many drafts verify may differ: the trained models give many EOS
                # positions a probability that rounds to 1 on one backend and just below on the other, and
                # such ties order the drafts' positions (the reference path is then another, equally valid one)
                assert got.tokens == ref.tokens, f"{ckpt.name}/{strategy}/{cache}"
                continue
            assert_same_run(ref, got, f"{ckpt.name}/{strategy}/{cache}")


# ---------------------------------------------------------------------- storage variants
def test_external_data_with_tiny_threshold(exported):
    ckpt, art, report = exported("dream", external_data_threshold_bytes=1)
    assert report["external_data"] == EXTERNAL_DATA_FILE
    data, graph = art / EXTERNAL_DATA_FILE, art / MODEL_FILE
    assert data.is_file() and data.stat().st_size >= report["weight_bytes"] > 0
    assert graph.stat().st_size < data.stat().st_size
    assert json.loads((art / CONFIG_FILE).read_text())["external_data"] == EXTERNAL_DATA_FILE
    onnx.checker.check_model(str(graph), full_check=True)
    tb = TorchBackend.from_pretrained(str(ckpt))
    g = gen_config("low_confidence", "dual")
    assert_same_run(generate(tb, PROMPTS, g), generate(OrtBackend.from_pretrained(art), PROMPTS, g), "external")


def test_fp16_export_validates_and_runs(exported):
    _, art, report = exported("llada", dtype="fp16")
    assert report["validation"]["status"] == "passed"
    for case in report["validation"]["cases"]:
        assert case["logits_max_rel"] <= 1e-2
    meta = json.loads((art / CONFIG_FILE).read_text())
    assert meta["cache"]["dtype"] == "float16"
    backend = OrtBackend.from_pretrained(art)
    out = generate(backend, PROMPTS, gen_config("low_confidence", "prefix"))
    assert len(out.tokens) == 2 and backend.allocate_cache(1, 4).layers[0][0].dtype == np.float16


def test_bf16_export_checks_and_says_why_it_cannot_validate_on_cpu(exported, tmp_path):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider present: bf16 validates there")
    _, art, report = exported("block_diffusion", dtype="bf16", validate=False)
    assert report["validation"]["status"] == "skipped"
    onnx.checker.check_model(str(art / MODEL_FILE), full_check=True)
    for node in onnx.load(str(art / MODEL_FILE)).graph.node:  # the exporter's bf16 cast bug is fixed
        if node.op_type == "Cast":
            assert node.attribute[0].i != onnx.TensorProto.COMPLEX128
    with pytest.raises(DllmError, match="bf16.*--no-validate"):
        export_onnx(make_checkpoint(tmp_path / "ckpt", "llada"), tmp_path / "out", dtype="bf16", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(DllmError, match="bf16.*provider='cuda'"):
        OrtBackend.from_pretrained(art)


# ---------------------------------------------------------------------- errors
def test_missing_dllm_config_is_a_clear_error(exported, tmp_path):
    ckpt, _, _ = exported("llada")
    with pytest.raises(DllmError, match="dllm_config.json is missing.*export"):
        load_backend("ort", str(ckpt))
    with pytest.raises(DllmError, match="does not exist"):
        OrtBackend.from_pretrained(tmp_path / "nowhere")


def test_other_format_version_is_a_clear_error(exported, tmp_path):
    _, art, _ = exported("llada")
    copy = tmp_path / "old"
    shutil.copytree(art, copy)
    meta = json.loads((copy / CONFIG_FILE).read_text())
    for fmt in (FORMAT_VERSION + 1, FORMAT_VERSION - 1):  # a newer one, and one of the old (format 1) contract
        meta["format_version"], meta["dllm_trt_version"] = fmt, "9.9.9"
        (copy / CONFIG_FILE).write_text(json.dumps(meta))
        with pytest.raises(DllmError, match=rf"dllm-trt 9\.9\.9 in artefact format {fmt}.*reads format "
                                            rf"{FORMAT_VERSION}.*Re-export"):
            OrtBackend.from_pretrained(copy)


def test_missing_provider_names_the_package(exported):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider is installed here")
    _, art, _ = exported("llada")
    with pytest.raises(DllmError, match="pip install onnxruntime-gpu"):
        OrtBackend.from_pretrained(art, provider="cuda")


def test_too_long_for_the_shape_range(backends, exported):
    _, oh, _ = backends("dream")
    with pytest.raises(DllmError, match="at most 64 positions"):
        oh.allocate_cache(1, 200)
    with pytest.raises(DllmError, match="64"):
        generate(oh, [[5] * 60], GenerationConfig(gen_length=16, block_length=16))


def test_out_dir_safety_and_atomic_write(exported, tmp_path, monkeypatch):
    ckpt, _, _ = exported("llada")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(DllmError, match="not a dllm-trt export"):
        export_onnx(ckpt, busy, progress=False)
    with pytest.raises(DllmError, match="replace the source folder"):
        export_onnx(ckpt, ckpt, progress=False)

    from dllm_trt.export import onnx_export

    def boom(*a, **k):
        raise KeyboardInterrupt

    out = tmp_path / "art"
    monkeypatch.setattr(onnx_export, "validate_graph", boom)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(ckpt, out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"], "an interrupted export left files behind"
    monkeypatch.undo()
    export_onnx(ckpt, out, progress=False, validate=False)
    first = (out / CONFIG_FILE).read_text()
    export_onnx(ckpt, out, progress=False, log=lambda s: None)  # an earlier export is replaced
    assert json.loads((out / CONFIG_FILE).read_text())["validation"]["status"] == "passed" != json.loads(first)["validation"]["status"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "busy"]


def test_cli_export_json_and_cache_default(exported, tmp_path, capsys):
    import argparse

    from dllm_trt.cli import main
    from dllm_trt.export.cli import add_export_commands

    ckpt, _, _ = exported("block_diffusion")
    parser = argparse.ArgumentParser()
    add_export_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", "--model", str(ckpt), "--out", str(tmp_path / "a"), "--cache", "block"])
    assert args.func and args.dtype == "fp32" and args.opset == 17 and not args.no_validate
    rc = main(["export", "--model", str(ckpt), "--out", str(tmp_path / "a"), "--cache", "block", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["validation"]["status"] == "passed"
    assert json.loads((tmp_path / "a" / CONFIG_FILE).read_text())["generation_defaults"]["cache"] == "block"
    assert main(["export", "--model", str(ckpt), "--out", str(tmp_path / "b"), "--cache", "dual"]) == 2
    assert "does not apply" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------------- the runtime without torch
def test_runtime_runs_without_torch(exported, backends, tmp_path):
    _, art, _ = exported("block_diffusion")
    tb, _, _ = backends("block_diffusion")
    g = gen_config("threshold", "sub_block")
    want = generate(tb, PROMPTS, g).tokens
    site = tmp_path / "site"
    site.mkdir()
    # sys.modules[name] = None makes `import name` raise ImportError in this interpreter.
    (site / "sitecustomize.py").write_text("import sys\nfor m in ('torch', 'transformers'):\n    sys.modules[m] = None\n")
    script = textwrap.dedent(f"""
        import json, sys
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("torch is importable: the test setup is broken")
        from dllm_trt.runtime import GenerationConfig, TextTokenizer, generate
        from dllm_trt.runtime.backends import load_backend
        backend = load_backend("ort", {str(art)!r})
        TextTokenizer({str(art)!r}).encode("add:1+2=")
        g = GenerationConfig(**json.loads({json.dumps(g.__dict__)!r}))
        print(json.dumps(generate(backend, {PROMPTS!r}, g).tokens))
        assert sys.modules.get("torch") is None
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == want


# ---------------------------------------------------------------------- CUDA (GPU machine only)
HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()
needs_cuda = pytest.mark.skipif(not HAS_CUDA_EP, reason="needs onnxruntime-gpu (CUDAExecutionProvider) and a GPU")
NO_TF32 = {"use_tf32": 0}  # fp32 on the GPU as fp32, so tokens can equal the fp32 CPU reference


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("variant", VARIANTS)
def test_cuda_provider_equals_torch(backends, exported, variant):
    """The device path for real: caches stay on the GPU (IO binding, pooled caches, the scatter_kv kernel)."""
    tb = backends(variant)[0]
    _, art, _ = exported(variant)
    cb = OrtBackend.from_pretrained(art, provider="cuda", provider_options=NO_TF32)
    assert cb.io_binding and cb.device_type == "cuda"
    cache = cb.allocate_cache(2, 32)
    assert cache.layers[0][0].value.device_name().lower() == "cuda"
    for strategy in STRATEGIES_FOR[ATTENTION[variant]]:
        for mode in cache_modes(variant):
            g = gen_config(strategy, mode)
            assert_same_run(generate(tb, PROMPTS, g), generate(cb, PROMPTS, g), f"cuda/{variant}/{strategy}/{mode}")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_validates_and_runs_on_cuda(exported, dtype):
    _, art, report = exported("block_diffusion", dtype=dtype)
    v = report["validation"]
    assert v["status"] == "passed"
    assert v["provider"] == ("CUDAExecutionProvider" if dtype == "bf16" else "CPUExecutionProvider")
    tol = 1e-2 if dtype == "fp16" else 5e-2
    assert v["tolerance_rel"] == tol
    assert all(c["logits_max_rel"] <= tol and c["present_max_rel"] <= tol for c in v["cases"])
    cb = OrtBackend.from_pretrained(art, provider="cuda")
    for mode in cache_modes("block_diffusion"):
        out = generate(cb, PROMPTS, gen_config("threshold", mode))
        assert out.nfe > 0 and all(0 <= t < 42 for seq in out.tokens for t in seq)
