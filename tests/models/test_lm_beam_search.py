"""Beam search (mm.models.lm_beam_search) on the hybrid lightning/softmax LM: one beam is greedy; with
enough beams it finds the best continuation an exhaustive search finds; it equals transformers' beam
search on the same weights; the VLM's evaluation runs it end to end (`mm eval caption --num-beams`)."""

import itertools
import json

import pytest
import torch

from mm.models.lm import LM, LMConfig, to_hf
from mm.models.lm_beam_search import beam_search
from mm.models.lm_generate import GenerationConfig, prefill
from tests.evals.test_caption import NEEDS_COCO_TOOLKIT
from tests.models.test_generate import CFG
from tests.tools.test_cli import run
from tests.tools.test_generate import expected, saved  # noqa: F401 (saved: a fixture)
from tests.tools.test_generate import generate as generate_cli

PROMPTS = [[3, 1, 4, 1], [2], [4, 0, 2, 3, 3, 1, 2]]  # uneven: packed prefill, each row at its own position


def tiny_lm(vocab: int, seed: int, sharpness: float, **overrides) -> LM:
    """The decoding tests' hybrid LM (lightning, softmax, lightning, softmax) with a small vocabulary.
    Matrices drawn with std 0.2 rather than the initial 0.02, so that the attention layers (their cache
    rows) shape the next token as much as the last token does — a beam continued from another beam's
    rows goes wrong — and the output layer scaled by ``sharpness``, so that a beam's best
    continuation depends on what follows."""
    torch.manual_seed(seed)
    model = LM(LMConfig(**{**CFG, "vocab_size": vocab, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
        model.lm_head.weight.mul_(sharpness)
    return model


def new_token_log_probs(model: LM, prompt: list[int], continuations: list[list[int]]) -> torch.Tensor:
    """log p(continuation | prompt) per new token [N, T] (zero-padded), from full forward passes."""
    width = max(map(len, continuations))
    ids = torch.tensor([prompt + c + [0] * (width - len(c)) for c in continuations])
    logp = model(ids).logits.float().log_softmax(-1)[:, len(prompt) - 1:-1]  # predicts tokens len(prompt)..
    picked = logp.gather(-1, ids[:, len(prompt):, None])[..., 0]
    lengths = torch.tensor([len(c) for c in continuations])
    return picked * (torch.arange(width)[None] < lengths[:, None])


def greedy_by_full_forward(model: LM, prompt: list[int], steps: int, eos_id: int | None) -> list[int]:
    seq = list(prompt)
    for _ in range(steps):
        seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
        if seq[-1] == eos_id:
            break
    return seq[len(prompt):]


@pytest.mark.parametrize("with_eos", [False, True])
def test_one_beam_is_greedy(with_eos):
    """num_beams=1 is the greedy path (a full forward per token); beam_search itself with one beam
    returns the same tokens (with an eos that stops the first row within 3 tokens)."""
    model = tiny_lm(vocab=7, seed=0, sharpness=4.0)
    eos_id = greedy_by_full_forward(model, PROMPTS[0], 3, None)[2] if with_eos else None
    cfg = GenerationConfig(max_new_tokens=6, eos_id=eos_id)
    greedy = [greedy_by_full_forward(model, p, 6, eos_id) for p in PROMPTS]
    assert model.generate(PROMPTS, cfg) == greedy
    assert beam_search(model, *prefill(model, PROMPTS, capacity=7 + 6), cfg) == greedy
    assert (len(greedy[0]) <= 3) == with_eos


def best_by_exhaustive_search(model, prompt, vocab, steps, eos_id, length_penalty):
    """The continuation of highest score (1) of mm.models.lm_beam_search over every token sequence of
    ``steps`` tokens, or shorter ending in eos."""
    candidates = [list(c) for n in range(1, steps + 1) for c in itertools.product(range(vocab), repeat=n)
                  if (eos_id in c and c.index(eos_id) == n - 1) or (n == steps and eos_id not in c)]
    total = new_token_log_probs(model, prompt, candidates).sum(1)
    scores = total / torch.tensor([len(c) for c in candidates], dtype=torch.float) ** length_penalty
    return candidates[int(scores.argmax())]


@pytest.mark.parametrize("eos_id,length_penalty", [(None, 1.0), (0, 1.0), (0, 0.0), (0, 3.0)])
def test_enough_beams_find_the_best_continuation(eos_id, length_penalty):
    """Vocabulary 5, 3 new tokens, 25 beams: every prefix of 2 tokens without eos stays live, so beam search must
    return the best of all continuations (total log-probability over length ** length_penalty),
    which greedy decoding misses for some prompt."""
    vocab, steps = 5, 3
    model = tiny_lm(vocab=vocab, seed=6, sharpness=0.6)
    cfg = GenerationConfig(max_new_tokens=steps, eos_id=eos_id, num_beams=vocab ** 2, length_penalty=length_penalty)
    best = [best_by_exhaustive_search(model, p, vocab, steps, eos_id, length_penalty) for p in PROMPTS]
    assert model.generate(PROMPTS, cfg) == best
    greedy = model.generate(PROMPTS, GenerationConfig(max_new_tokens=steps, eos_id=eos_id))
    assert greedy != best
    if length_penalty == 0.0:  # total log-probability alone favours hypotheses that end early
        assert min(map(len, best)) < steps


def test_settings_are_checked():
    with pytest.raises(ValueError, match="num_beams=3 with temperature=0.7"):
        GenerationConfig(num_beams=3, temperature=0.7)
    with pytest.raises(ValueError, match="num_beams=0"):
        GenerationConfig(num_beams=0)
    with pytest.raises(ValueError, match="length_penalty=nan"):
        GenerationConfig(num_beams=2, length_penalty=float("nan"))
    model = tiny_lm(vocab=7, seed=0, sharpness=1.0)
    assert model.generate(PROMPTS, GenerationConfig(max_new_tokens=0, num_beams=2)) == [[], [], []]


def hf_comparable_lm() -> LM:
    """A tiny LM that to_hf can write (RoPE on whole heads) whose beams often end in eos (id 0)."""
    model = tiny_lm(vocab=11, seed=5, sharpness=1.0, rotary_dim=8)
    with torch.no_grad():
        model.lm_head.weight[0].mul_(1.5)
    return model


@pytest.mark.parametrize("num_beams,length_penalty", [(3, 1.0), (3, 0.0), (2, 0.0), (3, 2.5)])
def test_equals_transformers_beam_search(tmp_path, num_beams, length_penalty):
    """Our batched beam search (uneven prompts, packed) against transformers' generate(num_beams=K,
    do_sample=False) of the same weights written by to_hf, one prompt at a time. transformers runs with
    use_cache=False: its MiniMaxCache (5.23) leaves the linear-attention states out of reorder_cache,
    so its cached beam search continues beams from other beams' lightning states."""
    transformers = pytest.importorskip("transformers")
    model = hf_comparable_lm()
    to_hf(model, tmp_path)
    theirs = transformers.MiniMaxForCausalLM.from_pretrained(tmp_path).eval()
    steps, eos = 7, 0
    cfg = GenerationConfig(max_new_tokens=steps, eos_id=eos, num_beams=num_beams, length_penalty=length_penalty)
    prompts = [[3, 1, 4, 1, 5], [9], [2, 6, 5, 3, 5, 8, 9, 7], [10, 4]]
    expected = []
    for prompt in prompts:
        out = theirs.generate(torch.tensor([prompt]), num_beams=num_beams, do_sample=False, max_new_tokens=steps,
                              eos_token_id=eos, pad_token_id=eos, length_penalty=length_penalty,
                              early_stopping=False, use_cache=False)
        expected.append(out[0, len(prompt):].tolist())
    assert model.generate(prompts, cfg) == expected
    if length_penalty < 2:  # hypotheses that end early win; a strong penalty favours long ones
        assert min(map(len, expected)) < steps


def test_search_stops_once_no_live_beam_can_win(monkeypatch):
    """A prompt whose K hypotheses end early: the search stops after the same steps and with the same
    answer whatever the token budget (the test of the module docstring, not max_new_tokens, ends it)."""
    import mm.models.lm_beam_search as module

    model, steps = hf_comparable_lm(), []
    reorder = module.reorder_rows_
    monkeypatch.setattr(module, "reorder_rows_", lambda cache, rows: (steps.append(1), reorder(cache, rows)))
    answers = []
    for budget in (7, 40):
        steps.clear()
        cfg = GenerationConfig(max_new_tokens=budget, eos_id=0, num_beams=3)
        answers.append(model.generate([[3, 1, 4, 1, 5]], cfg))
        assert len(steps) == 5
    assert answers[0] == answers[1] and answers[0][0][-1] == 0


@pytest.fixture(scope="module")
def vl_run(tmp_path_factory):
    """A tiny VL run (one training step of configs/vl_tiny.yaml shrunk as the recipe tests shrink it)
    and its held-out shards."""
    from mm.demo_vl import write_vl_data
    from mm.train.recipes.vl import VLRecipe
    from mm.train.trainer import Trainer
    from tests.train.test_vl_recipe import config

    root = tmp_path_factory.mktemp("vl_beams")
    shards = write_vl_data(root / "data", train=8, heldout=3)
    cfg = config(root / "run", shards, steps=1, stages=((1, ["adapter"]), (0, ["adapter", "lm"])))
    cfg.eval.caption_shards, cfg.eval.vqa_shards = [], []
    Trainer(VLRecipe(cfg)).fit()
    return root / "run", shards[1]


def test_vl_predict_with_beams_batches_like_one_by_one(vl_run, monkeypatch):
    """evals.vl_predict with num_beams=2 searches with two beams; questions of different lengths
    batched (packed prefill with the images spliced in) give the answers each gives alone."""
    import mm.models.lm_beam_search as module
    from evals.vl_predict import predict

    run_dir, heldout = vl_run
    searches = []
    search = module.beam_search
    monkeypatch.setattr(module, "beam_search", lambda *a: (searches.append(a[-1].num_beams), search(*a))[1])
    batched = predict(run_dir, [str(heldout)], "vqa", batch_size=8, max_new_tokens=4, num_beams=2, device="cpu")
    assert set(searches) == {2} and len(batched) > 3  # every batch; several questions per image
    alone = predict(run_dir, [str(heldout)], "vqa", batch_size=1, max_new_tokens=4, num_beams=2, device="cpu")
    assert batched == alone
    with pytest.raises(ValueError, match="num_beams must be >= 1, got .*, 0"):
        predict(run_dir, [str(heldout)], "vqa", batch_size=1, max_new_tokens=4, num_beams=0)


@NEEDS_COCO_TOOLKIT
def test_mm_eval_caption_with_beams(capsys, vl_run):
    from evals import caption
    from evals.vl_predict import predict

    run_dir, heldout = vl_run
    try:
        code, out, err = run(capsys, "eval", "caption", str(run_dir), "--shards", str(heldout), "--num-beams", "2",
                             "--max-new-tokens", "4", "--batch-size", "2", "--device", "cpu")
    finally:
        caption.release()  # its JVM holds ~1 GB
    assert code == 0, err
    report = json.loads((run_dir / "eval" / "caption.json").read_text())
    assert report["num_beams"] == 2 and report["items"] == 3 and "CIDEr-D" in out
    written = [json.loads(line) for line in (run_dir / "eval" / "caption.predictions.jsonl").read_text().splitlines()]
    assert written == predict(run_dir, [str(heldout)], "caption", batch_size=3, max_new_tokens=4, num_beams=2,
                              device="cpu")


def test_mm_generate_with_beams(capsys, saved):  # noqa: F811 (the fixture imported above)
    """`mm generate --num-beams K --length-penalty P` searches as generate() does with those settings;
    beams with sampling is a usage error."""
    run_dir, _, model = saved
    code, out, err = generate_cli(capsys, run_dir, "--num-beams", "3", "--length-penalty", "0.5")
    assert code == 0 and out == expected(model, num_beams=3, length_penalty=0.5), err
    assert out != expected(model)  # not greedy
    code, _, err = generate_cli(capsys, run_dir, "--num-beams", "3", "--temperature", "1.0")
    assert code == 2 and "num_beams=3 with temperature=1.0" in err


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                    reason="needs CUDA with grouped matmuls (compute capability 9.0)")
def test_graphed_beam_search_equals_eager():
    """The beams' cache rows are gathered in place, so a recorded decoding step reads them on replay."""
    model = hf_comparable_lm().to("cuda", torch.bfloat16)
    prompts = [[3, 1, 4, 1, 5], [9], [2, 6, 5, 3, 5, 8, 9, 7]]
    cfg = dict(max_new_tokens=8, eos_id=0, num_beams=3)
    eager = model.generate(prompts, GenerationConfig(**cfg))
    assert model.generate(prompts, GenerationConfig(**cfg, cuda_graph=True)) == eager
