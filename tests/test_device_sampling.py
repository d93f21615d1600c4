"""Sampling at temperature > 0 on the device: export/sampler.py's graph against the host's numpy arithmetic.

The sampler graph (``sampler.onnx`` beside every export) must give, row for row, the token
``runtime.sampling.propose`` draws from the same logits with the same uniform, its probability, and the
statistics the loop ranks by when sampling; and a decode whose sampling runs in it (ONNX Runtime's bound
path, the one CUDA uses, here on host memory) must give the host path's tokens for every family,
strategy and cache mode. tests/test_gpu_decode.py runs the same comparison on CUDA.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dllm_trt import contract
from dllm_trt.runtime import GenerationConfig, generate
from dllm_trt.runtime.sampling import chunked_cumsum, draw, dream_probs, propose, softmax64, sorted_prefix
from dllm_trt.runtime.settings import STRATEGIES_FOR, cache_modes_for

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[1]
CKPTS = {n: REPO / "samples" / "checkpoints" / n for n in ("llada-tiny", "dream-tiny", "bd-tiny")}
PROMPTS = [[7, 12, 9, 30, 5], [11, 4, 8, 20, 21, 22, 3, 17, 6]]
SETTLED = 5  # the sampler's outputs: SAMPLER_OUTPUTS, nucleus_settled, raw_confidence


@pytest.fixture
def unchunked(monkeypatch):
    """Cumulated sums in one chunk of 1 entry, i.e. a plain running sum (contract.CDF_CHUNK = 1): sorted prefixes
    of any length, so the prefix logic can be exercised on small vocabularies; the 64-entry chunks have their
    own tests below."""
    monkeypatch.setattr(contract, "CDF_CHUNK", 1)


def sampler_session(vocab: int, mask: int, flavour: str = "generic"):
    from dllm_trt.export.sampler import build_sampler

    return ort.InferenceSession(build_sampler(vocab, mask, flavour).SerializeToString(),
                                providers=["CPUExecutionProvider"])


def feeds(logits, u, temperature, top_k, top_p, sort_k=None):
    v = logits.shape[-1]
    k_on, p_on = 0 < top_k < v, top_p < 1.0
    sort_k = (contract.padded_vocab(v) if sort_k is None else sort_k) if p_on else contract.CDF_CHUNK
    return {"logits": logits, "uniform": u, "temperature": np.array([temperature]),
            "top_k": np.array([top_k if k_on else 1], np.int64), "top_k_on": np.array([k_on]),
            "top_p": np.array([top_p]), "top_p_k": np.array([sort_k], np.int64), "top_p_on": np.array([p_on])}


def check_prefix_run(sess, f, full, sort_k, top_p, settled_want, label):
    """The same rows with only ``sort_k`` entries sorted for top-p: ``nucleus_settled`` says which rows the prefix
    decides (numpy's test), and on those rows every output equals the whole sort's."""
    got = sess.run(None, dict(f, top_p_k=np.array([sort_k], np.int64)))
    settled = got[SETTLED]
    np.testing.assert_array_equal(settled, settled_want, err_msg=label)
    for i, (a, b) in enumerate(zip(got, full)):
        if i != SETTLED:
            np.testing.assert_array_equal(a[settled], b[settled], err_msg=label)
    return int(settled.sum()), int(settled.size)


GENERIC_CASES = [  # (vocab, mask token, CDF chunk, sorted prefixes tried for top-p)
    (301, 7, 1, (1, 3, 16)), (64, 63, 1, (1, 3, 16)), (50, -1, 1, (1, 3, 16)),
    (1000, 7, 64, (64, 128, 256)),  # the default chunks; rows padded to 1024
    (1024, 5, 64, (64, 128, 256)),  # a whole number of chunks: no padding
]


@pytest.mark.parametrize("vocab,mask,chunk,prefixes", GENERIC_CASES,
                         ids=[f"V{c[0]}-chunk{c[2]}" for c in GENERIC_CASES])
def test_sampler_graph_equals_numpy(vocab, mask, chunk, prefixes, monkeypatch):
    """Tokens equal, probabilities and statistics equal to float64 rounding, over temperatures, top-k (off,
    1, inside, the whole vocabulary, beyond it) and top-p (off, wide, narrow), with flat and peaked rows; with
    running sums (chunk 1) and with the default 64-entry chunks over rows padded to whole chunks."""
    monkeypatch.setattr(contract, "CDF_CHUNK", chunk)
    sess = sampler_session(vocab, mask)
    rng = np.random.default_rng(vocab)
    rows = settled_rows = prefix_rows = 0
    for trial in range(48):
        b, r = 2, 7
        scale = [0.3, 1.0, 4.0, 12.0][trial % 4]
        logits = (rng.standard_normal((b, r, vocab)) * scale).astype(np.float32)
        logits[0, 0, :5] = logits[0, 0].max() + 1.0  # exact ties at the top (the sort keeps the lower id first)
        t = [0.25, 0.7, 1.0, 1.8][trial % 4]
        k = [0, 1, 5, vocab, vocab + 9, 40][trial % 6]
        p = [1.0, 0.95, 0.5, 0.02][(trial // 2) % 4]
        u = rng.uniform(size=(b, r))
        u[1, 0] = 0.0  # the first id with mass
        u[1, 1] = 1.0 - 2.0 ** -53  # the last
        f = feeds(logits, u, t, k, p)
        full = sess.run(None, f)
        tok, conf, margin, negent, gap, _, raw = full
        if p < 1.0:  # top-p from a sorted prefix
            sort_k = prefixes[trial % 3]
            pf = np.stack([nucleus_prefix_mass(np.where(mask_of(vocab, mask), -np.inf, logits[i]), t, k, sort_k)
                           for i in range(b)])
            done, n = check_prefix_run(sess, f, full, sort_k, p, pf > p, f"trial {trial} k={sort_k}")
            settled_rows += done
            prefix_rows += n
        for i in range(b):
            z = logits[i].copy()
            if 0 <= mask < vocab:
                z[:, mask] = -np.inf
            want_tok, want_conf = propose(z, t, k, p, u[i])
            np.testing.assert_array_equal(tok[i], want_tok, err_msg=f"trial {trial} t={t} k={k} p={p}")
            np.testing.assert_allclose(conf[i], want_conf, rtol=1e-12)
            full = softmax64(z.astype(np.float64) / t)
            top2 = np.sort(full, axis=-1)[:, -2:]
            np.testing.assert_allclose(margin[i], top2[:, 1] - top2[:, 0], rtol=1e-10, atol=1e-15)
            np.testing.assert_allclose(negent[i], (full * np.log(full + 1e-10)).sum(-1), rtol=1e-10, atol=1e-15)
            top = np.sort(z.astype(np.float64), axis=-1)[:, -2:]
            np.testing.assert_allclose(gap[i], top[:, 1] - top[:, 0], rtol=1e-12)
            # LLaDA's confidence when sampling: the token's probability before temperature and filters
            untempered = softmax64(z.astype(np.float64))
            np.testing.assert_allclose(raw[i], untempered[np.arange(r), tok[i]], rtol=1e-12)
            if 0 <= mask < vocab:
                assert (tok[i] != mask).all()
            rows += r
    assert rows == 48 * 2 * 7
    assert 0 < settled_rows < prefix_rows  # both ways of the prefix test were exercised


def mask_of(vocab: int, mask: int) -> np.ndarray:
    m = np.zeros(vocab, bool)
    if 0 <= mask < vocab:
        m[mask] = True
    return m


def nucleus_prefix_mass(z: np.ndarray, t: float, k: int, sort_k: int, dream: bool = False) -> np.ndarray:
    """Per row, the mass of the sort_k most likely entries of the distribution top-p filters."""
    zt = z.astype(np.float64) / (t if t > 0 else 1.0)
    if not dream and 0 < k < z.shape[-1]:
        kth = np.sort(zt, axis=-1)[:, -k][:, None]
        zt = np.where(zt < kth, -np.inf, zt)
    p = softmax64(zt)
    if sort_k >= p.shape[-1]:
        return np.ones(p.shape[0])
    return chunked_cumsum(np.take_along_axis(p, sorted_prefix(zt if dream else p, sort_k), axis=-1))[:, -1]


DREAM_CASES = [(257, 3, 1, (1, 3, 16)), (40, -1, 1, (1, 3, 16)), (257, 3, 64, (64, 128, 192))]


@pytest.mark.parametrize("vocab,mask,chunk,prefixes", DREAM_CASES, ids=[f"V{c[0]}-chunk{c[2]}" for c in DREAM_CASES])
def test_dream_sampler_graph_equals_dream_probs(vocab, mask, chunk, prefixes, monkeypatch):
    """sampler_dream.onnx = runtime.sampling.dream_probs (nucleus, then top-k, then softmax) + the argmax at
    temperature 0 or the inverse CDF: tokens equal, probability / margin / sum p log p of the filtered
    distribution equal to float64 rounding."""
    monkeypatch.setattr(contract, "CDF_CHUNK", chunk)
    sess = sampler_session(vocab, mask, "dream")
    rng = np.random.default_rng(vocab + 1)
    for trial in range(48):
        b, r = 2, 6
        logits = (rng.standard_normal((b, r, vocab)) * [0.3, 1.0, 5.0, 15.0][trial % 4]).astype(np.float32)
        logits[0, 0, :4] = logits[0, 0].max() + 2.0  # exact ties at the top
        t = [0.0, 0.2, 0.7, 1.5][(trial // 4) % 4]
        k = [0, 1, 3, vocab - 1, vocab + 5, 30][trial % 6]
        p = [1.0, 0.95, 0.5, 0.01][(trial // 2) % 4]
        u = rng.uniform(size=(b, r))
        f = feeds(logits, u, t if t > 0 else 1.0, k, p)
        f["draw_on"] = np.array([t > 0])
        full = sess.run(None, f)
        tok, conf, margin, negent = full[:4]
        if p < 1.0:
            sort_k = prefixes[trial % 3]
            pf = np.stack([nucleus_prefix_mass(np.where(mask_of(vocab, mask), -np.inf, logits[i]), t, k, sort_k,
                                               dream=True) for i in range(b)])
            check_prefix_run(sess, f, full, sort_k, p, pf > p, f"trial {trial} k={sort_k}")
        for i in range(b):
            z = logits[i].copy()
            if 0 <= mask < vocab:
                z[:, mask] = -np.inf
            want = dream_probs(z, t, p, k)
            want_tok = want.argmax(-1) if t == 0 else draw(want, u[i])
            np.testing.assert_array_equal(tok[i], want_tok, err_msg=f"trial {trial} t={t} k={k} p={p}")
            np.testing.assert_allclose(conf[i], want[np.arange(r), want_tok], rtol=1e-12)
            top2 = np.sort(want, axis=-1)[:, -2:]
            np.testing.assert_allclose(margin[i], top2[:, 1] - top2[:, 0], rtol=1e-10, atol=1e-15)
            np.testing.assert_allclose(negent[i], (want * np.log(want + 1e-10)).sum(-1), rtol=1e-10, atol=1e-15)


def test_top_p_drops_only_past_a_mass_above_top_p(unchunked):
    """The boundary as SDAR's top_p_logits and Fast-dLLM v2's sample_with_top_p draw it: an entry goes when the
    mass ranked before it *exceeds* top_p. Four equal tokens (0.25 each) at top_p 0.5: the third stays (0.5
    before it, not above), the fourth goes; so each kept token has probability 1/3, on the host and in the
    sampler graph, from a sorted prefix too."""
    from dllm_trt.runtime.sampling import nucleus_keep

    logits = np.full((1, 1, 10), -np.inf, np.float32)
    logits[0, 0, [2, 5, 6, 9]] = 1.5
    p = softmax64(logits[0].astype(np.float64))
    np.testing.assert_array_equal(np.flatnonzero(nucleus_keep(p, 0.5)[0]), [2, 5, 6])
    for u in (0.0, 0.5, 0.999):
        tok, conf = propose(logits[0], 1.0, 0, 0.5, np.array([u]))
        assert tok[0] in (2, 5, 6) and conf[0] == pytest.approx(1 / 3, rel=1e-12)
    sess = sampler_session(10, 0)
    for sort_k in (10, 3):
        out = sess.run(None, feeds(logits, np.array([[0.999]]), 1.0, 0, 0.5, sort_k))
        assert out[0][0, 0] == 6 and out[1][0, 0] == pytest.approx(1 / 3, rel=1e-12) and out[SETTLED][0, 0]
    # a prefix of 2 holds 0.5, not above top_p: it does not settle the row (the runtime sorts it whole)
    assert not sess.run(None, feeds(logits, np.array([[0.999]]), 1.0, 0, 0.5, 2))[SETTLED][0, 0]


def test_chunked_cumsum_is_its_definition():
    """runtime.sampling.chunked_cumsum: entry j of chunk c = (the chunks before c, summed chunk by chunk) + (its
    running sum within chunk c), every addition in that order (a Python loop here); a prefix of whole chunks
    has the same sums as the whole row; within float64 rounding of the plain running sum."""
    rng = np.random.default_rng(4)
    x = rng.random((3, 1000))
    got = chunked_cumsum(x)
    c = contract.CDF_CHUNK
    assert c == 64
    for row in range(3):
        done = 0.0
        for start in range(0, 1000, c):
            run = 0.0
            for j in range(start, min(start + c, 1000)):
                run += x[row, j]
                assert got[row, j] == done + run
            done += run
    assert np.array_equal(chunked_cumsum(x[:, :128]), got[:, :128])
    np.testing.assert_allclose(got, np.cumsum(x, axis=-1), rtol=1e-13)


def test_top_p_boundary_in_chunks():
    """With the default 64-entry chunks: 128 equal tokens at top_p 0.5. The first 64 hold exactly 0.5, not above
    top_p: a 64-entry prefix does not settle the row; the whole sort keeps 65 tokens (0.5 before the 65th, not
    above; 65/128 before the 66th), on the host and in the sampler graph."""
    from dllm_trt.runtime.sampling import nucleus_keep

    v = 200
    logits = np.full((1, 1, v), -np.inf, np.float32)
    logits[0, 0, 10:138] = 0.5
    p = softmax64(logits[0].astype(np.float64))
    np.testing.assert_array_equal(np.flatnonzero(nucleus_keep(p, 0.5)[0]), np.arange(10, 75))
    sess = sampler_session(v, -1)
    assert not sess.run(None, feeds(logits, np.array([[0.5]]), 1.0, 0, 0.5, 64))[SETTLED][0, 0]
    for u in (0.0, 0.5, 0.999):
        tok, conf = propose(logits[0], 1.0, 0, 0.5, np.array([u]))
        out = sess.run(None, feeds(logits, np.array([[u]]), 1.0, 0, 0.5))  # the whole padded row (256)
        assert out[0][0, 0] == tok[0] and 10 <= tok[0] < 75
        assert out[1][0, 0] == conf[0] == pytest.approx(1 / 65, rel=1e-12) and out[SETTLED][0, 0]


def test_an_older_sampler_is_not_used(exports, tmp_path):
    """A sampler graph without this runtime's CDF chunk in its metadata (made before the chunked sums) is not
    opened: the backend says so and samples on the host, with the same tokens."""
    import onnx

    from dllm_trt.contract import CDF_CHUNK_KEY, SAMPLER_FILE
    from dllm_trt.runtime.backends.ort_backend import OrtBackend

    art = tmp_path / "llada-tiny"
    shutil.copytree(exports / "llada-tiny", art)
    m = onnx.load(str(art / SAMPLER_FILE))
    kept = [prop for prop in m.metadata_props if prop.key != CDF_CHUNK_KEY]
    del m.metadata_props[:]
    m.metadata_props.extend(kept)
    onnx.save(m, str(art / SAMPLER_FILE))
    with pytest.warns(RuntimeWarning, match="re-export"):
        bound = OrtBackend.from_pretrained(art, io_binding=True, intra_op_threads=1)
    assert not bound.samples_on_device and "CDF chunk None" in bound.sampler_error
    host = OrtBackend.from_pretrained(exports / "llada-tiny", intra_op_threads=1)
    g = GenerationConfig(gen_length=16, block_length=8, steps=8, cache="dual", seed=2, temperature=0.9, top_p=0.9)
    assert generate(bound, PROMPTS, g).tokens == generate(host, PROMPTS, g).tokens


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from dllm_trt.export import export_onnx

    root = tmp_path_factory.mktemp("device_sampling")
    for name, ckpt in CKPTS.items():
        export_onnx(ckpt, root / name, validate=False, progress=False, log=lambda s: None)
    return root


def test_export_writes_the_sampler(exports):
    from dllm_trt.contract import NUCLEUS_SETTLED, RAW_CONFIDENCE, SAMPLER_FILE, SAMPLER_INPUTS, SAMPLER_OUTPUTS
    from dllm_trt.integrity import verify_folder

    art = exports / "llada-tiny"
    meta = json.loads((art / "dllm_config.json").read_text())
    assert meta["sampler_file"] == SAMPLER_FILE and (art / SAMPLER_FILE).is_file()
    assert meta["dream_sampler_file"] is None and (exports / "dream-tiny" / "sampler_dream.onnx").is_file()
    sess = ort.InferenceSession(str(art / SAMPLER_FILE), providers=["CPUExecutionProvider"])
    assert tuple(i.name for i in sess.get_inputs()) == SAMPLER_INPUTS
    assert tuple(o.name for o in sess.get_outputs()) == SAMPLER_OUTPUTS + (NUCLEUS_SETTLED, RAW_CONFIDENCE)
    assert sess.get_inputs()[0].shape[-1] == meta["model_config"]["vocab_size"]
    assert verify_folder(art).ok  # covered by the artefact's manifest like every other file


@pytest.mark.parametrize("name", list(CKPTS))
def test_device_sampling_equals_host_sampling(exports, name):
    """Every strategy and cache mode, three sampling settings: the bound path (sampler graph, no logits
    downloaded) gives the host path's tokens and NFE (logits downloaded, numpy's propose)."""
    from dllm_trt.runtime.backends.ort_backend import OrtBackend

    host = OrtBackend.from_pretrained(exports / name, intra_op_threads=1)
    bound = OrtBackend.from_pretrained(exports / name, io_binding=True, intra_op_threads=1)
    assert bound.samples_on_device and not host.samples_on_device
    assert bound.samples_dream_on_device == (host.config.family == "dream")
    cases = 0
    for strategy in STRATEGIES_FOR[host.config.attention]:
        if strategy == "freedave":  # greedy only (refused at temperature > 0)
            continue
        for cache in cache_modes_for(strategy, host.config.attention):
            for t, k, p in ((0.8, 0, 1.0), (1.0, 5, 1.0), (1.3, 20, 0.7), (0.0, 0, 0.9), (0.0, 4, 1.0)):
                if t == 0 and host.config.family != "dream":  # greedy: the model graph's own top-1
                    continue
                g = GenerationConfig(strategy=strategy, cache=cache, gen_length=16, block_length=8, steps=8,
                                     threshold=0.7, sub_block_length=4, seed=3, temperature=t, top_k=k, top_p=p)
                want, got = generate(host, PROMPTS, g), generate(bound, PROMPTS, g)
                assert (got.tokens, got.nfe) == (want.tokens, want.nfe), f"{name}/{strategy}/{cache}/{t},{k},{p}"
                cases += 1
    assert cases >= 24


def unchunked_exports(exports, root: Path) -> Path:
    """Copies of the LLaDA and Dream exports whose sampler graphs use the current contract.CDF_CHUNK."""
    import onnx

    from dllm_trt.contract import DREAM_SAMPLER_FILE, SAMPLER_FILE
    from dllm_trt.export.sampler import build_sampler

    for name in ("llada-tiny", "dream-tiny"):
        shutil.copytree(exports / name, root / name)
        meta = json.loads((root / name / "dllm_config.json").read_text())["model_config"]
        onnx.save(build_sampler(meta["vocab_size"], meta["mask_token_id"]), str(root / name / SAMPLER_FILE))
        if (root / name / DREAM_SAMPLER_FILE).is_file():
            onnx.save(build_sampler(meta["vocab_size"], meta["mask_token_id"], "dream"),
                      str(root / name / DREAM_SAMPLER_FILE))
    return root


@pytest.mark.parametrize("prefix", [1, 3, 12])
def test_top_p_from_a_sorted_prefix_equals_the_whole_sort(exports, prefix, monkeypatch, unchunked, tmp_path):
    """Top-p sorts NUCLEUS_PREFIX entries first and the whole vocabulary only for rows that prefix does not
    settle (the bound path runs the sampler graph again, numpy sorts those rows): with prefixes of 1, 3 and 12
    entries of the tiny models' 42, both paths give the tokens and NFE of the whole sort, for LLaDA's and
    Dream's top-p, with rows settled by the prefix and rows not."""
    import dllm_trt.runtime.backends.ort_backend as ob
    from dllm_trt.runtime import sampling
    from dllm_trt.runtime.backends.ort_backend import OrtBackend

    settings = ((0.9, 0, 0.9), (1.2, 8, 0.6), (0.0, 0, 0.85), (0.7, 0, 0.99))
    exports = unchunked_exports(exports, tmp_path)  # samplers made with this test's one-entry chunks
    want = {}
    for name in ("llada-tiny", "dream-tiny"):
        host = OrtBackend.from_pretrained(exports / name, intra_op_threads=1)
        for t, k, p in settings:
            g = GenerationConfig(gen_length=16, block_length=8, steps=8, cache="dual", seed=5, temperature=t, top_k=k,
                                 top_p=p)
            want[name, t, k, p] = generate(host, PROMPTS, g)
    runs = []
    real = ob.OrtBackend.sample

    def counted(self, *a, **kw):
        out = real(self, *a, **kw)
        runs.append(self._last.sampler[kw.get("dream", a[4] if len(a) > 4 else False)][6])
        return out

    monkeypatch.setattr(sampling, "NUCLEUS_PREFIX", prefix)
    monkeypatch.setattr(ob, "NUCLEUS_PREFIX", prefix)
    monkeypatch.setattr(ob.OrtBackend, "sample", counted)
    for name in ("llada-tiny", "dream-tiny"):
        host = OrtBackend.from_pretrained(exports / name, intra_op_threads=1)
        bound = OrtBackend.from_pretrained(exports / name, io_binding=True, intra_op_threads=1)
        for t, k, p in settings:
            if t == 0 and name != "dream-tiny":
                continue
            g = GenerationConfig(gen_length=16, block_length=8, steps=8, cache="dual", seed=5, temperature=t, top_k=k,
                                 top_p=p)
            w = want[name, t, k, p]
            for backend in (host, bound):
                got = generate(backend, PROMPTS, g)
                assert (got.tokens, got.nfe) == (w.tokens, w.nfe), f"{name} {backend.io_binding} {t},{k},{p}"
    # the last sort of each sampler call: the prefix when it settled every row, else the whole vocabulary (a
    # one-entry prefix leaves some rows unsettled; twelve entries of these sure models settle every row)
    assert prefix in runs
    if prefix in (1, 12):
        assert (42 in runs) == (prefix == 1)


def test_without_a_sampler_the_host_samples(exports, tmp_path):
    """An export without sampler.onnx (made before it existed, or removed) samples on the host, same tokens."""
    from dllm_trt.contract import SAMPLER_FILE
    from dllm_trt.runtime.backends.ort_backend import OrtBackend

    art = tmp_path / "no-sampler"
    shutil.copytree(exports / "llada-tiny", art)
    (art / SAMPLER_FILE).unlink()
    bound = OrtBackend.from_pretrained(art, io_binding=True, intra_op_threads=1)
    assert not bound.samples_on_device
    g = GenerationConfig(gen_length=16, block_length=8, steps=8, cache="dual", temperature=0.9, top_p=0.9, seed=11)
    with_sampler = OrtBackend.from_pretrained(exports / "llada-tiny", io_binding=True, intra_op_threads=1)
    assert generate(bound, PROMPTS, g).tokens == generate(with_sampler, PROMPTS, g).tokens


@pytest.mark.parametrize("name,untempered", [("llada-tiny", True), ("dream-tiny", False), ("bd-tiny", False)])
def test_llada_ranks_samples_by_their_untempered_probability(exports, name, untempered):
    """LLaDA's generate (and Fast-dLLM's LLaDA code) draws at the temperature (Gumbel-max) but ranks the drawn
    token by softmax(logits)[token], the probability before temperature; SDAR, Fast-dLLM v2 and Dream rank by the
    tempered, filtered distribution they drew from. The host path's proposal confidences, on logits rows."""
    from dllm_trt.runtime.backends.base import StepOutput
    from dllm_trt.runtime.backends.ort_backend import OrtBackend
    from dllm_trt.runtime.decode import DecodeLoop

    host = OrtBackend.from_pretrained(exports / name, intra_op_threads=1)
    g = GenerationConfig(gen_length=16, block_length=8, steps=8, seed=3, temperature=0.6, top_p=0.9,
                         strategy="low_confidence" if name != "dream-tiny" else "entropy")
    loop = DecodeLoop(host, [PROMPTS[0]], g)
    assert loop.untempered == untempered
    v = host.config.vocab_size
    logits = (np.random.default_rng(0).standard_normal((1, 6, v)) * 3).astype(np.float32)
    out = StepOutput(np.zeros((1, 6), np.int64), np.zeros((1, 6), np.float32), logits)
    j = np.arange(6)
    tokens, conf = loop._propose(out, 0, j, j + 10)
    z = logits[0].astype(np.float64)
    z[:, host.config.mask_token_id] = -np.inf
    raw = softmax64(z)[j, tokens]
    tempered = softmax64(z / 0.6)[j, tokens]
    assert not np.allclose(raw, tempered)
    if untempered:
        np.testing.assert_allclose(conf, raw, rtol=1e-12)
    else:
        assert not np.allclose(conf, raw)
