"""Config loading: schema defaults, YAML, dotted overrides, and errors that name key and file."""

from dataclasses import dataclass, field

import pytest

from mm.config import MISSING, ConfigError, load_config, parse_overrides
from mm.train.recipe import load_recipe_config
from tests.train import toy_recipe  # noqa: F401  (registers the "toy" recipe)


@dataclass
class Inner:
    lr: float = 1e-3
    layers: int = 2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])

    def __post_init__(self):
        if self.layers < 1:
            raise ValueError(f"inner.layers must be >= 1, got {self.layers}")


@dataclass
class Outer:
    name: str = MISSING
    inner: Inner = field(default_factory=Inner)


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_file_then_overrides_in_order(tmp_path):
    path = write(tmp_path, "name: a\ninner:\n  lr: 0.5\n  layers: 3\n")
    cfg = load_config(Outer, path, ["inner.layers=4", "inner.betas=[0.8,0.9]"])
    assert cfg == Outer(name="a", inner=Inner(lr=0.5, layers=4, betas=[0.8, 0.9]))


@dataclass
class Source:
    name: str = "a"
    weight: float = 1.0
    inner: Inner = field(default_factory=Inner)


@dataclass
class Sources:
    sources: list[Source] = field(default_factory=lambda: [Source("a"), Source("b")])


def test_an_override_can_index_a_list_of_structured_entries():
    cfg = load_config(Sources, None, ["sources.1.weight=2", "sources.0.inner.betas=[0.5,0.6]"])
    assert cfg.sources == [Source("a", inner=Inner(betas=[0.5, 0.6])), Source("b", weight=2.0)]
    with pytest.raises(ConfigError, match=r"sources\.2\.weight.*sources has 2 entries.*got index 2"):
        load_config(Sources, None, ["sources.2.weight=2"])
    with pytest.raises(ConfigError, match=r"sources\.0\.inner\.width"):
        load_config(Sources, None, ["sources.0.inner.width=3"])
    with pytest.raises(ConfigError, match=r"inner\.layers must be >= 1"):  # __post_init__ still runs
        load_config(Sources, None, ["sources.0.inner.layers=0"])


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    path = write(tmp_path, "name: a\ninner:\n  lrr: 0.5\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*inner\.lrr"):
        load_config(Outer, path)


def test_unknown_key_on_command_line(tmp_path):
    path = write(tmp_path, "name: a\n")
    with pytest.raises(ConfigError, match=r"command line.*inner\.width"):
        load_config(Outer, path, ["inner.width=3"])


@pytest.mark.parametrize("bad", ["inner.layers=2.5", "inner.layers=abc", "inner.lr=fast", "inner.betas=[1,x]"])
def test_wrong_type_fails(tmp_path, bad):
    path = write(tmp_path, "name: a\n")
    with pytest.raises(ConfigError, match=bad.split("=")[0].replace(".", r"\.")):
        load_config(Outer, path, [bad])


def test_wrong_type_in_file_names_file(tmp_path):
    path = write(tmp_path, "name: a\ninner:\n  layers: many\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*inner\.layers"):
        load_config(Outer, path)


def test_missing_required_value(tmp_path):
    path = write(tmp_path, "inner:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="required.*name"):
        load_config(Outer, path)


def test_post_init_checks_run_on_resolved_values(tmp_path):
    path = write(tmp_path, "name: a\n")
    with pytest.raises(ConfigError, match="inner.layers must be >= 1, got 0"):
        load_config(Outer, path, ["inner.layers=0"])


@pytest.mark.parametrize("bad", ["inner.lr", "=3", "inner..lr=3"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_overrides([bad])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, write(tmp_path, "name: [a\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, write(tmp_path, "- a\n- b\n"))


def test_recipe_schema_selected_by_recipe_key(tmp_path):
    path = write(tmp_path, "recipe: toy\nmodel:\n  width: 7\n")
    cfg = load_recipe_config(path, ["optim.lr=0.01"])
    assert cfg.model.width == 7 and cfg.optim.lr == 0.01
    with pytest.raises(ConfigError, match="model.depth"):
        load_recipe_config(path, ["model.depth=2"])
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        load_recipe_config(write(tmp_path, "recipe: nope\n", "n.yaml"))
    with pytest.raises(ConfigError, match="'recipe' is required"):
        load_recipe_config(write(tmp_path, "model: {}\n", "m.yaml"))


def test_component_checks(tmp_path):
    path = write(tmp_path, "recipe: toy\n")
    for bad, message in [("checkpoint.keep_last=1", "keep_last must be >= 2"),
                         ("schedule.name=linear", "schedule.name must be one of"),
                         ("train.steps=0", "train.steps must be >= 1")]:
        with pytest.raises(ConfigError, match=message):
            load_recipe_config(path, [bad])
