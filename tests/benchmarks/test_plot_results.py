"""The benchmark pictures are drawn from the committed results JSON alone (no GPU)."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from benchmarks import plot_results

RESULTS = Path(__file__).parents[2] / "benchmarks" / "results"


@pytest.mark.parametrize("name", ["lightning_attn", "lm"])
def test_committed_results_redraw(tmp_path, name):
    shutil.copy(RESULTS / f"{name}.json", tmp_path)
    png = plot_results.plot_file(tmp_path / f"{name}.json")
    assert png == tmp_path / f"{name}.png"
    with Image.open(png) as img:
        assert img.format == "PNG" and img.width >= 1000 and img.height >= 400


def test_lm_plot_draws_only_the_sections_present(tmp_path):
    results = json.loads((RESULTS / "lm.json").read_text())
    results["sections"] = {k: v for k, v in results["sections"].items() if k.startswith("decode")}
    with Image.open(plot_results.plot_lm(results, tmp_path / "decode.png")) as img:
        assert img.width < 1000  # one panel, not a 2 x 2 grid


def test_unknown_results_file_is_refused(tmp_path, capsys):
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="no plotter for 'other'"):
        plot_results.plot_file(tmp_path / "other.json")
    assert plot_results.main([str(tmp_path / "other.json")]) == 2
    assert "other.json" in capsys.readouterr().err
