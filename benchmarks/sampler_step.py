"""The sampler graph alone on ONNX Runtime's CUDA provider: milliseconds per decode step for LLaDA-8B's
vocabulary (126,464; mask 126,336), 32 rows, as the runtime drives it (OrtBackend.sample: the top-p sort of
NUCLEUS_PREFIX entries first, the whole padded row again only where the prefix did not settle every row).

Rows: peaked (a trained model's at temperature 0.05: a few likely tokens) and flat (random weights at 0.7:
the nucleus is most of the vocabulary, so top-p needs the whole sort). No model is needed: the logits are
made on the host and uploaded once.

    python benchmarks/sampler_step.py [--rows 32] [--repeat 20] [--json]   # GPU machine, onnxruntime-gpu
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dllm_trt import contract  # noqa: E402
from dllm_trt.export.sampler import build_sampler  # noqa: E402
from dllm_trt.runtime.sampling import NUCLEUS_PREFIX  # noqa: E402

VOCAB, MASK = 126464, 126336


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--provider", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke run of the script")
    ap.add_argument("--vocab", type=int, default=VOCAB)
    args = ap.parse_args()
    vocab, mask = args.vocab, MASK if args.vocab > MASK else args.vocab - 1
    device = "cuda" if args.provider == "cuda" else "cpu"
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if device == "cuda":  # every node on the GPU, as the runtime opens it
        opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    provider = ("CUDAExecutionProvider", {"device_id": 0}) if device == "cuda" else "CPUExecutionProvider"
    sess = ort.InferenceSession(build_sampler(vocab, mask).SerializeToString(), sess_options=opts,
                                providers=[provider])
    rng = np.random.default_rng(0)
    shapes = {"peaked": 12.0, "flat": 1.0}
    whole = contract.padded_vocab(vocab)
    results = []
    for shape, scale in shapes.items():
        logits = (rng.standard_normal((1, args.rows, vocab)) * scale).astype(np.float32)
        value = ort.OrtValue.ortvalue_from_numpy(logits, device, 0)
        for temperature, top_p in ((0.7, 0.95), (0.05, 0.95), (0.7, 1.0)):
            io = sess.io_binding()
            io.bind_ortvalue_input("logits", value)
            io.bind_cpu_input("uniform", rng.uniform(size=(1, args.rows)))
            p_on = top_p < 1.0
            for name, v in (("temperature", np.array([temperature])), ("top_k", np.array([1], np.int64)),
                            ("top_k_on", np.array([False])), ("top_p", np.array([top_p])),
                            ("top_p_on", np.array([p_on]))):
                io.bind_cpu_input(name, v)
            for o in sess.get_outputs():
                io.bind_output(o.name, device, 0)
            sorts = ((NUCLEUS_PREFIX, whole) if NUCLEUS_PREFIX < whole else (whole,)) if p_on else (contract.CDF_CHUNK,)

            def step() -> int:
                for i, k in enumerate(sorts):
                    io.bind_cpu_input("top_p_k", np.array([k], np.int64))
                    sess.run_with_iobinding(io)
                    settled = io.get_outputs()[5].numpy()
                    if i == len(sorts) - 1 or settled.all():
                        return i + 1
                return len(sorts)

            passes = step()
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                step()
                times.append((time.perf_counter() - t0) * 1e3)
            results.append({"rows": shape, "temperature": temperature, "top_p": top_p, "passes": passes,
                            "ms_per_step": statistics.median(times)})
    if args.json:
        print(json.dumps({"vocab": vocab, "provider": args.provider, "rows": args.rows, "onnxruntime": ort.__version__, "results": results},
                         indent=2))
        return
    print(f"sampler graph, vocabulary {vocab}, {args.rows} rows, onnxruntime {ort.__version__} {args.provider}")
    print("| rows | temperature | top-p | passes | ms / step |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['rows']} | {r['temperature']} | {r['top_p']} | {r['passes']} | {r['ms_per_step']:.2f} |")


if __name__ == "__main__":
    main()
