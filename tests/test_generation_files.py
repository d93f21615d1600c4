"""generation_config.json read with Hugging Face's meaning; dllm-trt's own keys in dllm_generation.json;
EOS ids from both generation_config.json and config.json."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from conftest import REPO
from dllm_trt.config import ModelConfig
from dllm_trt.errors import DllmError
from dllm_trt.runtime import GenerationConfig
from dllm_trt.runtime.generation_files import LEGACY_KEYS, family_generation_fields, hf_generation_fields
from dllm_trt.runtime.settings import folder_generation_defaults

UPSTREAM = REPO / "tests" / "fixtures" / "upstream"
BUNDLED = REPO / "samples" / "checkpoints"


def copy_of(tmp_path: Path, family: str) -> Path:
    d = tmp_path / family
    shutil.copytree(UPSTREAM / family, d)
    return d


def test_hf_sampling_keys_are_not_decode_defaults():
    """generation_config.json's sampling keys configure transformers' autoregressive generate(); the families'
    diffusion decoders do not read them (LLaDA generate, Dream diffusion_generate, Fast-dLLM v2 generate,
    SDAR generate.py), so neither does dllm-trt: only the generation length is taken."""
    assert hf_generation_fields({"temperature": 0.2, "top_p": 0.95, "max_new_tokens": 512}) == {"gen_length": 512}
    assert hf_generation_fields({"do_sample": False, "temperature": 0.7}) == {}
    assert hf_generation_fields({"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.8}) == {}
    # keys without a dllm-trt meaning stay out (eos_token_id goes to ModelConfig, the rest is not decoded)
    assert hf_generation_fields({"eos_token_id": [1, 2], "bos_token_id": 3, "repetition_penalty": 1.05}) == {}
    with pytest.raises(DllmError, match="not a number"):
        hf_generation_fields({"max_new_tokens": "many"})


def test_family_hook_maps_dreams_own_keys():
    raw = json.loads((UPSTREAM / "dream" / "generation_config.json").read_text())
    assert family_generation_fields(raw, "dream") == {"strategy": "entropy", "alg_temp": 0.0, "steps": 512}
    assert family_generation_fields({"steps": 64}, "sdar") == {}  # other families' `steps` is not Dream's


@pytest.mark.parametrize("family,want", [
    ("dream", {"gen_length": 512, "strategy": "entropy", "steps": 512, "alg_temp": 0.0}),
    # the published Fast-dLLM v2 / SDAR files carry their base model's do_sample settings; the authors'
    # decoders ignore them (Fast-dLLM v2's generate: temperature 0), and so does dllm-trt: greedy
    ("fast_dllm_v2", {}),
    ("sdar", {}),
    ("llada", {}),
])
def test_upstream_generation_configs(family, want):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # upstream files are not legacy dllm-trt files
        assert folder_generation_defaults(UPSTREAM / family) == want
    GenerationConfig(**want)  # every mapped key is a GenerationConfig field


@pytest.mark.parametrize("family,want", [("llada", (257,)), ("dream", (256,)), ("fast_dllm_v2", (258, 256)),
                                         ("sdar", (256, 258))])
def test_eos_ids_are_the_union_of_config_and_generation_config(family, want):
    """SDAR's config.json names <|endoftext|> only; its chat turns end with <|im_end|> (generation_config.json)."""
    assert ModelConfig.from_pretrained(UPSTREAM / family).eos_token_ids == want


def test_eos_id_int_or_list_and_bad_values(tmp_path):
    d = copy_of(tmp_path, "dream")
    gc = d / "generation_config.json"
    gc.write_text(json.dumps({"eos_token_id": 258}))
    assert ModelConfig.from_pretrained(d).eos_token_ids == (256, 258)
    gc.write_text(json.dumps({"eos_token_id": [258, 256, 257]}))
    assert ModelConfig.from_pretrained(d).eos_token_ids == (256, 258, 257)
    assert ModelConfig.from_dict(ModelConfig.from_pretrained(d).to_hf_dict()).eos_token_ids == (256, 258, 257)
    gc.write_text(json.dumps({"eos_token_id": 99999}))
    with pytest.raises(DllmError, match=r"generation_config.json: eos_token_id 99999 is outside the vocabulary"):
        ModelConfig.from_pretrained(d)
    gc.write_text(json.dumps({"eos_token_id": "end"}))
    with pytest.raises(DllmError, match="integer or a list of integers"):
        ModelConfig.from_pretrained(d)


def test_dllm_generation_json_overrides_hf_keys_and_refuses_unknown_keys(tmp_path):
    d = copy_of(tmp_path, "fast_dllm_v2")
    (d / "dllm_generation.json").write_text(json.dumps({"temperature": 0.5, "strategy": "threshold",
                                                        "sub_block_length": 4}))
    assert folder_generation_defaults(d) == {"temperature": 0.5, "strategy": "threshold", "sub_block_length": 4}
    (d / "dllm_generation.json").write_text(json.dumps({"max_new_tokens": 4}))
    with pytest.raises(DllmError, match=r"dllm_generation.json: unknown key 'max_new_tokens'"):
        folder_generation_defaults(d)
    (d / "dllm_generation.json").write_text("[1]")
    with pytest.raises(DllmError, match="must hold a JSON object"):
        folder_generation_defaults(d)


def test_bundled_checkpoints_keep_hf_and_own_keys_apart():
    for name in ("llada-tiny", "dream-tiny", "bd-tiny"):
        hf = json.loads((BUNDLED / name / "generation_config.json").read_text())
        own = json.loads((BUNDLED / name / "dllm_generation.json").read_text())
        assert not set(hf) & set(LEGACY_KEYS) and "steps" not in hf, name
        assert own["gen_length"] == 16 and folder_generation_defaults(BUNDLED / name) == own, name


def test_legacy_folder_is_read_as_before_with_a_warning(tmp_path):
    """A folder written before dllm_generation.json (decode keys in generation_config.json) still decodes the same."""
    d = tmp_path / "old"
    shutil.copytree(BUNDLED / "llada-tiny", d)
    own = json.loads((d / "dllm_generation.json").read_text())
    (d / "dllm_generation.json").unlink()
    (d / "generation_config.json").write_text(json.dumps(dict(own, eos_token_id=0, mask_token_id=1)))
    with pytest.warns(FutureWarning, match="move them to dllm_generation.json"):
        assert folder_generation_defaults(d) == own


@pytest.mark.parametrize("values,needle", [
    ({"gen_length": "16"}, "'gen_length' '16' is not an integer"),
    ({"gen_length": True}, "'gen_length' True is not an integer"),
    ({"threshold": -3}, "'threshold' -3.0 is out of range"),
    ({"threshold": 1.5}, "'threshold' 1.5 is out of range"),
    ({"factor": -1}, "'factor' -1.0 is out of range"),
    ({"stop_at_eos": "no"}, "'stop_at_eos' 'no' is not true or false"),
    ({"strategy": 3}, "'strategy' 3 is not a string"),
    ({"block_length": None}, "'block_length' is null"),
    ({"top_p": 2}, "'top_p' 2.0 is out of range"),
    ({"eps": 1.0}, "'eps' 1.0 is out of range"),
])
def test_dllm_generation_json_values_are_held_to_the_options_ranges(tmp_path, values, needle):
    """A file's decode defaults get the command line's type and range checks (a string where an integer goes
    used to surface as a TypeError inside the loop; a negative threshold decoded silently), naming the file."""
    d = copy_of(tmp_path, "fast_dllm_v2")
    (d / "dllm_generation.json").write_text(json.dumps(values))
    with pytest.raises(DllmError, match="dllm_generation.json: " + needle.replace("(", r"\(")):
        folder_generation_defaults(d)
    ok = {"gen_length": 16, "threshold": 0.9, "steps": None, "stop_at_eos": False, "top_p": 1}
    (d / "dllm_generation.json").write_text(json.dumps(ok))
    assert folder_generation_defaults(d) == ok  # integers where a number goes, null where a setting may be unset


def test_an_exports_recorded_defaults_are_checked(tmp_path):
    """An export written before these checks may record a bad default: reading it says which file."""
    from dllm_trt.runtime.generation_files import generation_defaults_of
    from dllm_trt.runtime.settings import field_kinds

    (tmp_path / "dllm_config.json").write_text(json.dumps({"generation_defaults": {"threshold": "0.9"}}))
    with pytest.raises(DllmError, match=r"dllm_config.json: generation_defaults 'threshold' '0.9' is not a number"):
        generation_defaults_of(tmp_path, field_kinds())


def test_sweep_values_are_held_to_the_options_ranges():
    from dllm_trt.profiling.sweep import parse_sweep

    for item, needle in (("threshold=0.5,-1", "--sweep threshold -1.0 is out of range"),
                         ("factor=-2", "--sweep factor -2.0"), ("block=0", "--sweep block 0"),
                         ("top_p=1.5", "--sweep top_p 1.5")):
        with pytest.raises(DllmError, match=needle):
            parse_sweep([item])
    assert parse_sweep(["threshold=0.5,1.0", "block=4,8"]) == {"threshold": [0.5, 1.0], "block": [4, 8]}
