"""The `mm` command: help, usage errors (exit 2 with a hint), --print-config."""

import subprocess
import sys

import pytest

from tools.cli import SUBCOMMANDS, main


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_every_subcommand(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_help(capsys, name):
    code, out, _ = run(capsys, name, "--help")
    assert code == 0 and out.startswith("usage: mm " + name)


@pytest.mark.parametrize("argv", [[], ["nope"], ["train"], ["train", "a.yaml", "--bogus"], ["plot"],
                                  ["generate", "run"]])
def test_usage_errors_exit_2_with_hint(capsys, argv):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "error:" in err and "--help" in err


def test_config_errors_exit_2_naming_key_and_file(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("recipe: lm\nmodel:\n  hidden: 32\n")
    code, _, err = run(capsys, "train", str(cfg), "optim.lrr=1")
    assert code == 2 and "optim.lrr" in err and "command line" in err
    cfg.write_text("recipe: lm\nmodel:\n  hiddn: 32\n")
    code, _, err = run(capsys, "train", str(cfg))
    assert code == 2 and "model.hiddn" in err and "c.yaml" in err
    code, _, err = run(capsys, "train", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml" in err
    code, _, err = run(capsys, "train", str(cfg), "optim.lr")
    assert code == 2 and "dotted.key=value" in err


def test_print_config_resolves_overrides(capsys):
    code, out, _ = run(capsys, "train", "configs/lm_tiny.yaml", "optim.lr=0.002", "train.steps=7", "--print-config")
    assert code == 0
    assert "recipe: lm" in out and "lr: 0.002" in out and "steps: 7" in out


def test_plot_rejects_non_run_directory(capsys, tmp_path):
    code, _, err = run(capsys, "plot", str(tmp_path))
    assert code == 2 and "metrics.jsonl" in err


def test_installed_console_script():
    """The `mm` entry point itself (not only main()) exits 2 on misuse and 0 on --help."""
    mm = [sys.executable, "-m", "tools.cli"]
    assert subprocess.run([*mm, "--help"], capture_output=True).returncode == 0
    bad = subprocess.run([*mm, "frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_inconsistent_model_config_fails_before_work(capsys):
    code, _, err = run(capsys, "train", "configs/lm_tiny.yaml", "model.layers=3")
    assert code == 2 and "attn_type_list has 4 entries for 3 layers" in err
