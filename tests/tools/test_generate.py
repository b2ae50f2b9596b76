"""`mm generate`: the LM of a run, a checkpoint or a Hugging Face folder continues prompts as the
model's own generate() does; what cannot be loaded is an error naming the path."""

import pytest
import torch

from data_pipelines.tokenizers import ByteTokenizer
from mm.config import to_yaml
from mm.models.lm import LM, to_hf
from mm.models.lm_generate import GenerationConfig
from mm.train.checkpoint import WEIGHTS, CheckpointManager
from mm.train.recipe import load_recipe_config
from tests.tools.test_cli import run
from tests.train.test_lm_recipe import TINY

PROMPTS = ["3 plus 4 is ", "ab"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run directory holding one checkpoint of a random tiny LM, and that model."""
    cfg = load_recipe_config("configs/lm_tiny.yaml", [*TINY, "model.rotary_dim=16"])  # whole-head RoPE: HF's
    model = LM(cfg.model).eval()
    run_dir = tmp_path_factory.mktemp("run")
    checkpoint = CheckpointManager(run_dir / "checkpoints").save(7, model, {}, to_yaml(cfg))
    return run_dir, checkpoint, model


def expected(model, **settings) -> str:
    """What mm generate prints: each prompt and its continuation (random bytes: maybe line breaks) on a line."""
    tok = ByteTokenizer()
    cfg = GenerationConfig(max_new_tokens=10, eos_id=tok.eos_id, **settings)
    outs = model.generate([tok.encode(p) for p in PROMPTS], cfg)
    texts = [tok.decode([t for t in out if t != tok.eos_id]) for out in outs]
    return "".join(f"{p}{text}\n" for p, text in zip(PROMPTS, texts, strict=True))


def generate(capsys, where, *extra):
    prompts = [arg for p in PROMPTS for arg in ("--prompt", p)]
    return run(capsys, "generate", str(where), *prompts, "--max-new-tokens", "10", "--device", "cpu", *extra)


@pytest.mark.parametrize("where", ["run", "checkpoint"])
def test_continues_prompts_from_a_run_or_a_checkpoint(capsys, saved, where):
    run_dir, checkpoint, model = saved
    code, out, err = generate(capsys, run_dir if where == "run" else checkpoint)
    assert code == 0, err
    assert out == expected(model)
    assert "tokens/s" in err


def test_sampling_settings_reach_the_model(capsys, saved):
    run_dir, _, model = saved
    code, out, _ = generate(capsys, run_dir, "--temperature", "1.0", "--top-p", "0.9", "--seed", "5")
    assert code == 0 and out == expected(model, temperature=1.0, top_p=0.9, seed=5)
    assert out != expected(model)  # not greedy


def test_continues_prompts_from_a_hugging_face_folder(capsys, saved, tmp_path):
    model = saved[2]
    to_hf(model, tmp_path / "hf")
    code, _, err = generate(capsys, tmp_path / "hf")
    assert code == 2 and "no tokenizer.json; name one with --tokenizer" in err
    code, out, err = generate(capsys, tmp_path / "hf", "--tokenizer", "byte")
    assert code == 0, err
    assert out == expected(model)
    (tmp_path / "hf" / "tokenizer.json").write_text("{not json")
    code, _, err = generate(capsys, tmp_path / "hf")
    assert code == 2 and "tokenizer.json: not a tokenizer.json" in err


def test_what_cannot_be_loaded_is_named(capsys, saved, tmp_path):
    run_dir, checkpoint, _ = saved
    code, _, err = generate(capsys, tmp_path / "nope")
    assert code == 2 and "nope: no such directory" in err
    code, _, err = generate(capsys, tmp_path)
    assert code == 2 and "neither a run, a checkpoint" in err
    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    code, _, err = generate(capsys, tmp_path / "empty_run")
    assert code == 2 and "the run has no complete checkpoint" in err
    code, _, err = generate(capsys, run_dir, "--cuda-graph")
    assert code == 2 and "--cuda-graph needs a CUDA device" in err
    code, _, err = run(capsys, "generate", str(run_dir), "--prompt", "", "--device", "cpu")
    assert code == 2 and "encodes to no tokens" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in checkpoint.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / WEIGHTS).write_bytes(b"not safetensors")
    code, _, err = generate(capsys, broken)
    assert code == 1 and f"{broken / WEIGHTS}" in err


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                    reason="needs CUDA with grouped matmuls (compute capability 9.0)")
def test_cuda_graph_decoding_prints_what_eager_decoding_does(capsys, saved):
    run_dir = saved[0]
    code, eager, err = generate(capsys, run_dir, "--device", "cuda")
    assert code == 0, err
    code, graphed, err = generate(capsys, run_dir, "--device", "cuda", "--cuda-graph")
    assert code == 0 and graphed == eager and "cuda" in err
