"""`mm eval caption|vqa`: scoring mode end to end (JSONL in, table and JSON out, malformed lines by
number), model mode with a stand-in for evals.vl_predict.predict (both runs, blind included)."""

import json
import sys
import types

import pytest

from evals import caption
from evals.caption import score_captions
from mm.train.checkpoint import CheckpointError
from tests.evals.test_caption import NEEDS_COCO_TOOLKIT
from tests.evals.test_vqa import ten
from tests.tools.test_cli import run

CAPTIONS = [
    {"id": 1, "prediction": "A man's dog, running.", "references": ["a man 's dog running", "A dog runs."]},
    {"id": "b", "prediction": "two cats on a sofa", "references": ["Two cats sleep on a sofa.", "cats asleep"]},
    {"id": 3, "prediction": "a red bus", "references": ["a red double decker bus", "red bus"], "image": "x.jpg"},
]
VQA = [
    {"id": 1, "prediction": "Yes.", "answers": ten(("yes", 10)), "answer_type": "yes/no"},  # 1
    {"id": 2, "prediction": "two", "answers": ten(("2", 3), ("3", 7)), "answer_type": "number"},  # 0.9
    {"id": 3, "prediction": "no", "answers": ten(("yes", 9), ("no", 1)), "answer_type": "yes/no"},  # 0.3
    {"id": 4, "prediction": "red", "answers": ten(("red", 10))},  # 1, no type
]


@pytest.fixture(scope="module", autouse=True)
def _stop_meteor_afterwards():
    yield
    caption.release()  # its JVM holds ~1 GB; the rest of the suite does not need it


def jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@NEEDS_COCO_TOOLKIT
def test_caption_scoring_mode_prints_and_writes_the_toolkit_scores(capsys, tmp_path):
    code, out, err = run(capsys, "eval", "caption", "--predictions", str(jsonl(tmp_path / "p.jsonl", CAPTIONS)),
                         "--out", str(tmp_path / "s.json"))
    assert code == 0, err
    report = json.loads((tmp_path / "s.json").read_text())
    expected = score_captions({str(r["id"]): r["prediction"] for r in CAPTIONS},
                              {str(r["id"]): r["references"] for r in CAPTIONS})
    assert report["scores"] == pytest.approx(expected) and report["items"] == 3
    assert "offline" in report["unavailable"]["SPICE"]
    for name, value in expected.items():
        assert f"{name}" in out and f"{value:.4f}" in out
    assert "SPICE" in out and "unavailable offline" in out


def test_vqa_scoring_mode(capsys, tmp_path):
    code, out, err = run(capsys, "eval", "vqa", "--predictions", str(jsonl(tmp_path / "p.jsonl", VQA)),
                         "--out", str(tmp_path / "sub" / "s.json"))
    assert code == 0, err
    scores = json.loads((tmp_path / "sub" / "s.json").read_text())["scores"]
    assert scores["accuracy"] == pytest.approx(100 * (1 + 0.9 + 0.3 + 1) / 4)
    assert scores["per_answer_type"] == pytest.approx({"number": 90.0, "yes/no": 65.0})
    assert "80.00" in out and "yes/no (2)" in out and "65.00" in out and "per-question accuracy" in out
    code, out, _ = run(capsys, "eval", "vqa", "--predictions", str(tmp_path / "p.jsonl"))  # no --out: print only
    assert code == 0 and "80.00" in out and "written" not in out


def test_malformed_lines_are_reported_by_number(capsys, tmp_path):
    good = json.dumps(VQA[0])
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([
        good,
        '{"id": 2, "prediction": "x", ',  # not JSON
        json.dumps({"id": 3, "prediction": "x", "answers": ["x"] * 9}),
        json.dumps({"id": 4, "answers": ["x"] * 10}),
        "",  # blank lines are skipped
        json.dumps({**VQA[1], "id": 1}),  # id repeats line 1
        json.dumps(VQA[2]),
        "[1, 2]",
    ]) + "\n")
    code, out, err = run(capsys, "eval", "vqa", "--predictions", str(bad))
    assert code == 2 and out == ""
    assert "5 malformed vqa line(s)" in err and "Try 'mm eval --help'" in err
    for line, what in [(2, "Expecting"), (3, "'answers' must hold 10 strings, got 9"),
                       (4, "'prediction' must be a string"), (6, "id 1 repeats line 1"), (8, "want a JSON object")]:
        assert f"{bad}:{line}: {what}" in err
    bad.write_text(json.dumps({"id": 1, "prediction": "x", "answers": ["x"] * 10}) + "\n")
    code, _, err = run(capsys, "eval", "caption", "--predictions", str(bad))
    assert code == 2 and f"{bad}:1: 'references' must be a non-empty list of strings, got None" in err
    bad.write_text("\n\n")
    code, _, err = run(capsys, "eval", "caption", "--predictions", str(bad))
    assert code == 2 and "no records" in err


@pytest.mark.parametrize("argv,message", [
    (["vqa"], "give either a model"),
    (["vqa", "run", "--predictions", "p.jsonl"], "give either a model"),
    (["vqa", "--predictions", "p.jsonl", "--shards", "d", "--num-beams", "2"], "--shards, --num-beams: only for model"),
    (["vqa", "--predictions", "missing.jsonl"], "missing.jsonl: no such file"),
    (["caption", "nowhere"], "nowhere: no such run or checkpoint"),
    (["caption", "."], "model mode needs --shards DIR"),
    (["caption", ".", "--shards", "d", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_exit_2(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    jsonl(tmp_path / "p.jsonl", VQA)
    code, _, err = run(capsys, "eval", *argv)
    assert code == 2 and message in err and "--help" in err


@pytest.fixture
def fake_predict(monkeypatch):
    """A stand-in for evals.vl_predict.predict: the records of the task, answers spoilt when blind."""
    calls = []

    def predict(model_path, shards, task, *, batch_size, max_new_tokens, num_beams=1, blind=False, device=None):
        calls.append(dict(model_path=model_path, shards=shards, task=task, batch_size=batch_size,
                          max_new_tokens=max_new_tokens, num_beams=num_beams, blind=blind, device=device))
        records = [dict(r) for r in (VQA if task == "vqa" else CAPTIONS)]
        if blind:
            for r in records:
                r["prediction"] = "no" if task == "vqa" else "a thing"
        return records

    monkeypatch.setitem(sys.modules, "evals.vl_predict", types.SimpleNamespace(predict=predict))
    return calls


def test_model_mode_scores_the_model_and_its_blind_baseline(capsys, tmp_path, fake_predict):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code, out, err = run(capsys, "eval", "vqa", str(run_dir), "--shards", "data/eval", "--batch-size", "4",
                         "--num-beams", "3", "--device", "cpu")
    assert code == 0, err
    assert fake_predict == [dict(model_path=str(run_dir), shards="data/eval", task="vqa", batch_size=4,
                                 max_new_tokens=10, num_beams=3, blind=blind, device="cpu") for blind in (False, True)]
    report = json.loads((run_dir / "eval" / "vqa.json").read_text())
    assert report["scores"]["accuracy"] == pytest.approx(80.0)
    assert report["blind"]["accuracy"] == pytest.approx(100 * (0 + 0 + 0.3 + 0) / 4)  # "no" is 1 of 10 on q3
    written = [json.loads(line) for line in (run_dir / "eval" / "vqa.predictions.jsonl").read_text().splitlines()]
    blind = [json.loads(line) for line in (run_dir / "eval" / "vqa.blind.predictions.jsonl").read_text().splitlines()]
    assert written == VQA and [r["prediction"] for r in blind] == ["no"] * 4
    assert report["predictions"] == str(run_dir / "eval" / "vqa.predictions.jsonl")
    assert "model" in out and "blind" in out and "80.00" in out and "7.50" in out
    # what model mode wrote can be scored again in scoring mode, to the same figure
    code, out, _ = run(capsys, "eval", "vqa", "--predictions", report["predictions"])
    assert code == 0 and "80.00" in out


@NEEDS_COCO_TOOLKIT
def test_caption_model_mode_writes_beside_out(capsys, tmp_path, fake_predict):
    code, out, err = run(capsys, "eval", "caption", str(tmp_path), "--shards", "d", "--out", str(tmp_path / "o.json"))
    assert code == 0, err
    report = json.loads((tmp_path / "o.json").read_text())
    assert fake_predict[0]["max_new_tokens"] == 32 and fake_predict[0]["batch_size"] == 16
    assert (tmp_path / "o.predictions.jsonl").is_file() and (tmp_path / "o.blind.predictions.jsonl").is_file()
    assert report["scores"]["CIDEr-D"] > report["blind"]["CIDEr-D"] and "SPICE" in report["unavailable"]


def test_model_mode_rejects_bad_records_and_leaves_other_ranks_quiet(capsys, tmp_path, monkeypatch, fake_predict):
    monkeypatch.setenv("RANK", "1")
    code, out, _ = run(capsys, "eval", "vqa", str(tmp_path), "--shards", "d")
    assert code == 0 and out == "" and not (tmp_path / "eval").exists() and len(fake_predict) == 2
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setitem(sys.modules, "evals.vl_predict",
                        types.SimpleNamespace(predict=lambda *a, **k: [{"id": 1, "prediction": 5}]))
    code, _, err = run(capsys, "eval", "vqa", str(tmp_path), "--shards", "d")
    assert code == 2 and f"predictions of {tmp_path}[0]: 'prediction' must be a string, got 5" in err


@pytest.mark.parametrize("error,code", [(ValueError("d: no shards (*.tar)"), 2),
                                        (FileNotFoundError("d: no such folder"), 2),
                                        (CheckpointError("model.safetensors: not safetensors"), 1)])
def test_what_predict_cannot_read_is_named(capsys, tmp_path, monkeypatch, error, code):
    def predict(*args, **kwargs):
        raise error

    monkeypatch.setitem(sys.modules, "evals.vl_predict", types.SimpleNamespace(predict=predict))
    got, _, err = run(capsys, "eval", "caption", str(tmp_path), "--shards", "d")
    assert got == code and str(error) in err and not (tmp_path / "eval").exists()


def test_missing_java_exits_1(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(caption.shutil, "which", lambda name: None)
    code, _, err = run(capsys, "eval", "caption", "--predictions", str(jsonl(tmp_path / "p.jsonl", CAPTIONS)))
    assert code == 1 and "need Java on PATH" in err
