"""BPE training and loading (the `tokenizers` library), and the `mm tokenizer train` command."""

import io
import tarfile

import pytest

from data_pipelines.text_sources import iter_texts
from data_pipelines.tokenizers import ByteTokenizer, FileTokenizer, load_tokenizer, train_bpe
from tools.cli import main

TEXT = "the red circle is at the top left. there are three blue squares. 3 plus 4 is 7. " * 20


def test_bpe_round_trip_and_compression(tmp_path):
    tok = train_bpe([TEXT, "naïve café ☃"], vocab_size=300, out=str(tmp_path / "tok.json"))
    assert tok.vocab_size == 300 and tok.eos_id == 2
    for text in ["the red circle", "unseen wörds ☃ 🙂", ""]:
        assert tok.decode(tok.encode(text)) == text  # byte-level: everything encodes
    assert len(tok.encode(TEXT)) < 0.5 * len(ByteTokenizer().encode(TEXT)), "merges should compress"


def test_load_tokenizer_errors(tmp_path):
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    with pytest.raises(ValueError, match="not found"):
        load_tokenizer(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        FileTokenizer(str(tmp_path / "bad.json"))
    train_bpe([TEXT], 300, str(tmp_path / "t.json"))
    with pytest.raises(ValueError, match="<end>"):
        FileTokenizer(str(tmp_path / "t.json"), eos_token="<end>")


def test_text_sources_files_folders_and_shards(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.txt").write_text("beta")
    (tmp_path / "docs" / "bad.txt").write_bytes(b"\xff\xfe")
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for key, text in (("x", b"gamma"), ("y", b"delta")):
            info = tarfile.TarInfo(f"{key}.txt")
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    texts = list(iter_texts([str(tmp_path / "a.txt"), str(tmp_path / "docs"), str(tmp_path / "s.tar")]))
    assert texts == ["alpha", "beta", "gamma", "delta"]


def test_cli_trains_a_tokenizer(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text(TEXT)
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", str(tmp_path / "corpus.txt"), "-o", str(out), "--vocab-size", "280",
                 "--quiet"]) == 0
    assert FileTokenizer(str(out)).vocab_size == 280
    assert main(["tokenizer", "train", str(tmp_path / "nope"), "-o", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
