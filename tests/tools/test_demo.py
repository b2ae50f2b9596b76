"""`mm demo --fast`: every stage runs end to end and the summary names its figures."""

import torch

from mm.demo import STAGES
from tools.cli import main


def test_fast_demo_runs_every_stage(tmp_path, capsys):
    assert main(["demo", "--fast", "--stages", ",".join(STAGES), "--out", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.md").read_text()
    for figure in ("held-out loss", "unigram baseline", "greedy accuracy", "sample",  # lm
                   "LightNet held-out top-1", "softmax ViT (same size) held-out top-1",  # lightnet
                   "held-out CIDEr-D (images / blind)", "held-out VQA accuracy",  # vl
                   "AVHScore"):  # av
        assert figure in summary
    assert [line.split("|")[1].strip() for line in summary.splitlines() if "| status |" in line] == list(STAGES)
    assert ("| all | device | cuda" if torch.cuda.is_available() else "| all | device | cpu") in summary
    assert (tmp_path / "lm" / "curves.png").is_file()


def test_unknown_stage_is_a_usage_error(tmp_path, capsys):
    assert main(["demo", "--stages", "lm,nope", "--out", str(tmp_path)]) == 2
    assert "unknown stage" in capsys.readouterr().err
