"""`mm train` as a new user meets it: resuming a finished run, a tiny held-out set, shard paths
that lead nowhere (issue 22, "Bugs found trying the LM recipe as a new user would")."""

import logging
import math
from dataclasses import dataclass, field

import pytest
import torch

from data_pipelines.testing import write_samples
from data_pipelines.tokenizers import ByteTokenizer
from mm.config import ConfigError, check_shard_keys
from mm.train.recipe import load_recipe_config
from mm.train.run_log import read_metrics
from tests.train.test_lm_recipe import TINY
from tests.train.toy_recipe import ToyRecipe  # noqa: F401 - registers the `toy` recipe
from tools.cli import main

TOY = "recipe: toy\ntrain:\n  log_every: 1\n  progress: false\n  eval_every: 2\nschedule:\n  name: constant\n"


def run(capsys, *argv):
    code = main(["train", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def train_losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"}


def test_resume_of_a_finished_run_says_so_and_a_larger_steps_continues(tmp_path, capsys):
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(TOY)
    code, _, _ = run(capsys, cfg, f"run.dir={tmp_path / 'full'}", "train.steps=6")
    assert code == 0
    part = [cfg, f"run.dir={tmp_path / 'part'}"]
    assert run(capsys, *part, "train.steps=4")[0] == 0
    metrics_before = (tmp_path / "part" / "metrics.jsonl").read_text()

    code, out, err = run(capsys, *part, "train.steps=4", "--resume", "latest")
    assert code == 0, err
    assert "already complete at step 4" in out and "train.steps=4 " not in out
    assert "train.steps=<more than 4> --resume latest" in out  # how to go on
    assert (tmp_path / "part" / "metrics.jsonl").read_text() == metrics_before  # nothing trained or rewritten

    code, out, err = run(capsys, *part, "train.steps=6", "--resume", "latest")
    assert code == 0, err
    assert "steps: 6" in out
    # steps 5-6 continue exactly where the finished run stopped (constant schedule: same as one 6-step run)
    assert train_losses(tmp_path / "part") == train_losses(tmp_path / "full")
    assert (tmp_path / "part" / "checkpoints" / "step_00000006" / "COMPLETE").is_file()


def lm_config(tmp_path, heldout, *extra):
    write_samples(tmp_path / "train", [{"__key__": f"t{i}", "txt": f"doc {i} says hello."} for i in range(8)])
    return load_recipe_config("configs/lm_tiny.yaml", [*TINY, f"run.dir={tmp_path / 'run'}",
                                                       f"data.stream.shards=[{tmp_path / 'train'}]",
                                                       f"eval.shards=[{heldout}]", *extra])


@pytest.mark.parametrize("masking", [True, False])
def test_heldout_smaller_than_one_batch_is_evaluated_whole(tmp_path, masking):
    from mm.train.recipes.lm import LMRecipe

    texts = ["the red square is at the top.", "3 plus 4 is 7.", "after one comes two."]
    write_samples(tmp_path / "heldout", [{"__key__": f"h{i}", "txt": t} for i, t in enumerate(texts)])
    # a batch is 4 rows of 128 tokens; the held-out set is 66 tokens: one partial batch of one row
    recipe = LMRecipe(lm_config(tmp_path, tmp_path / "heldout", "data.seq_len=128", f"document_masking={masking}"))
    torch.manual_seed(0)
    model = recipe.build_model().eval()
    with torch.no_grad():
        got = recipe.evaluate(model, torch.device("cpu"))
        tok = ByteTokenizer()
        nll, n = 0.0, 0
        docs = [[*tok.encode(t), tok.eos_id] for t in texts]
        # with document masking each document stands alone; without it the row is one causal stream
        for ids in map(torch.tensor, docs if masking else [sum(docs, [])]):
            labels = torch.cat([ids[1:], torch.tensor([-100])])
            labels[ids == tok.eos_id] = -100
            out = model(ids[None], labels=labels[None], return_logits=False)
            nll += out.lm_loss.item() * int(out.num_tokens)
            n += int(out.num_tokens)
    assert n == sum(len(t.encode()) for t in texts)  # every held-out token, none invented
    assert got["loss"] == pytest.approx(nll / n, rel=1e-4)
    assert got["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-4)
    assert 0 < got["unigram_loss"] < 20


def test_nothing_to_evaluate_says_so_and_records_no_number(tmp_path, caplog):
    from mm.train.recipes.lm import LMRecipe

    # held-out shards whose samples carry no text member: nothing to evaluate
    write_samples(tmp_path / "heldout", [{"__key__": f"h{i}", "json": "{}"} for i in range(3)])
    recipe = LMRecipe(lm_config(tmp_path, tmp_path / "heldout"))
    with caplog.at_level(logging.WARNING), torch.no_grad():
        assert recipe.evaluate(recipe.build_model().eval(), torch.device("cpu")) == {}
    assert "nothing to evaluate" in caplog.text and str(tmp_path / "heldout") in caplog.text


def test_shard_paths_are_checked_before_any_work(tmp_path, capsys):
    write_samples(tmp_path / "text", [{"__key__": "a", "txt": "hello"}])
    (tmp_path / "empty").mkdir()
    good = [f"data.stream.shards=[{tmp_path / 'text'}]", f"eval.shards=[{tmp_path / 'text'}]"]
    cases = {
        "data.stream.shards": f"data.stream.shards=[{tmp_path / 'empty'}]",
        "eval.shards": f"eval.shards=[{tmp_path / 'text'},{tmp_path / 'gone'}]",
    }
    for key, bad in cases.items():
        code, _, err = run(capsys, "configs/lm_tiny.yaml", *TINY, f"run.dir={tmp_path / 'run'}", *good, bad)
        assert code == 2, err
        assert f"key '{key}'" in err and str(tmp_path) in err and "--help" in err
        assert "Traceback" not in err
    pattern = f"data.stream.shards=['{tmp_path / 'text'}/shard-{{000000..000002}}.tar']"
    code, _, err = run(capsys, "configs/lm_tiny.yaml", *TINY, f"run.dir={tmp_path / 'run'}", *good, pattern)
    assert code == 2 and "shard-000001.tar" in err
    assert not (tmp_path / "run").exists()  # refused before any work started


@dataclass
class _Source:
    shards: list[str] = field(default_factory=list)


@dataclass
class _Cfg:
    sources: list[_Source] = field(default_factory=list)
    heldout: list[str] = field(default_factory=list)


def test_check_shard_keys_walks_lists_and_names_the_item(tmp_path):
    write_samples(tmp_path / "ok", [{"__key__": "a", "txt": "x"}])
    cfg = _Cfg(sources=[_Source([str(tmp_path / "ok")]), _Source([str(tmp_path / "nope.tar")])], heldout=[])
    with pytest.raises(ConfigError, match=r"key 'sources\[1\]\.shards'.*nope\.tar.*does not exist"):
        check_shard_keys(cfg, ["heldout", "sources.*.shards"])
    cfg.sources.pop()
    check_shard_keys(cfg, ["heldout", "sources.*.shards"])  # empty lists and good folders pass
    with pytest.raises(ConfigError, match="not a local path"):
        check_shard_keys(_Cfg(heldout=["http://host/x.tar"]), ["heldout"])
    with pytest.raises(ValueError, match="no field 'nope'"):
        check_shard_keys(cfg, ["sources.*.nope"])
