"""Upstream logits for checkpoints whose config.json sets forward-pass keys away from LLaDA-8B / Dream-7B.

tests/test_config_keys.py loads each case folder with dllm-trt and compares its logits with the logits
the upstream modeling code computed from the same folder.

``build``  (the project environment): per case, ``tests/fixtures/config_keys/<case>/`` gets
    ``config.json`` (the tiny upstream fixture config of tools/upstream_fixtures.py, smaller, with the
    case's keys set) and ``model.safetensors`` (bf16; drawn by this script from a seeded generator:
    every bias and norm weight random, so a dropped bias or a wrong norm shows in the logits).
``run``    (a venv with transformers, e.g. /work/upstream-venv): loads every case folder with the
    upstream class (Fast-dLLM llada/model LLaDAModelLM, Fast-dLLM dream/model DreamModel) through
    ``from_pretrained`` in fp32, checks that every tensor loads unchanged, and writes
    ``<case>.upstream_logits.safetensors`` next to the folder (``logits`` [1, L, rows] for the case's ``INPUT_IDS``).

    python tools/config_key_fixtures.py build
    /work/upstream-venv/bin/python tools/config_key_fixtures.py run --upstream /work/upstream-src
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "config_keys"
sys.path.insert(0, str(REPO / "tools"))
import upstream_fixtures as uf  # noqa: E402

INPUT_IDS = [[3, 17, 250, 88, 261, 261, 5, 261, 42, 300, 1, 261]]
SMALL = {"llada": dict(d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=64),
         "dream": dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                       intermediate_size=64)}

# case -> (family, config.json keys set on the small fixture config)
CASES = {
    "llada_include_bias": ("llada", dict(include_bias=True, bias_for_layer_norm=None)),
    "llada_bias_for_layer_norm": ("llada", dict(bias_for_layer_norm=True)),
    "llada_gemma_rms": ("llada", dict(layer_norm_type="gemma_rms")),
    "llada_layer_norm_no_affine": ("llada", dict(layer_norm_type="default", layer_norm_with_affine=False)),
    "llada_gelu": ("llada", dict(activation_type="gelu")),
    "llada_relu": ("llada", dict(activation_type="relu")),
    "llada_emb_norm_scale_logits": ("llada", dict(input_emb_norm=True, scale_logits=True)),
    "llada_mqa_mlp_ratio": ("llada", dict(n_kv_heads=None, multi_query_attention=True, mlp_hidden_size=None,
                                          mlp_ratio=3)),
    "llada_padded_tied": ("llada", dict(embedding_size=384, weight_tying=True)),
    "dream_gelu": ("dream", dict(hidden_act="gelu")),
    "dream_gelu_tanh_tied": ("dream", dict(hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True)),
    "dream_relu": ("dream", dict(hidden_act="relu")),
}


def case_config(name: str) -> dict:
    family, keys = CASES[name]
    return {**uf.config_json(family), **SMALL[family], **keys}


def cmd_build() -> None:
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(REPO))
    from dllm_trt.config import ModelConfig
    from dllm_trt.models import build_model

    for i, name in enumerate(CASES):
        raw = case_config(name)
        torch.manual_seed(1000 + i)
        model = build_model(ModelConfig.from_dict(raw))
        g = torch.Generator().manual_seed(i)
        state = {}
        for k, v in model.state_dict().items():
            if k.endswith("bias"):
                v = 0.3 * torch.randn(v.shape, generator=g)
            elif "norm" in k or k.endswith("ln_f.weight"):
                v = 0.3 + 0.2 * torch.randn(v.shape, generator=g)  # gemma_rms scales by 1 + weight
            elif v.dim() == 2:
                v = torch.randn(v.shape, generator=g) * (2.0 / v.shape[1] ** 0.5)
            state[k] = v.to(torch.bfloat16).contiguous()
        d = OUT / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
        save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
        gc = uf.generation_config_json(CASES[name][0])
        if gc is not None:  # Dream's from_pretrained reads it
            (d / "generation_config.json").write_text(json.dumps(gc, indent=2) + "\n")


def cmd_run(up: Path) -> None:
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(up / "Fast-dLLM" / "llada"))
    from model.modeling_llada import LLaDAModelLM
    for mod in [m for m in sys.modules if m == "model" or m.startswith("model.")]:
        del sys.modules[mod]  # dream's package is also called "model"
    sys.path.insert(0, str(up / "Fast-dLLM" / "dream"))
    from model.modeling_dream import DreamModel

    classes = {"llada": LLaDAModelLM, "dream": DreamModel}
    for name, (family, _) in CASES.items():
        d = OUT / name
        model = uf._load_strict(classes[family], d)
        with torch.no_grad():
            logits = model(torch.tensor(INPUT_IDS)).logits.float()
        save_file({"logits": logits.contiguous()}, str(OUT / f"{name}.upstream_logits.safetensors"))
        print(name, tuple(logits.shape))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("build", "run"))
    ap.add_argument("--upstream", type=Path, default=Path("/work/upstream-src"))
    args = ap.parse_args()
    cmd_build() if args.command == "build" else cmd_run(args.upstream)


if __name__ == "__main__":
    main()
