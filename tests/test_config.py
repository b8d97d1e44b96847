"""Tests of the run configuration: defaults, profiles, YAML files, overrides, run_config, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flower_eec.errors import ConfigError
from flower_eec.run.config import (
    Config,
    close_keys,
    flat_keys,
    from_json,
    from_run_config,
    parse_overrides,
    resolve,
    to_dict,
    to_json,
)

FILE = """\
method: fedavg
train: {lr: 0.2, rounds: 3}
profiles:
  smoke: {train: {lr: 0.3}}
  cpu: {topology: {num_devices: 8, num_edges: 2}}
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(FILE)
    return path


# --- defaults and profiles ------------------------------------------------------------------


def test_defaults_are_hierfavg_on_the_smoke_profile() -> None:
    config = resolve()

    assert isinstance(config, Config)
    assert (config.method, config.profile, config.seed, config.out) == ("hierfavg", "smoke", 0, "")
    assert config.data.dataset == "synthetic"
    assert (config.data.synthetic_train, config.data.synthetic_test) == (400, 200)
    assert config.data.partition == "iid"
    assert config.data.local_test_size == 20
    assert (config.topology.num_devices, config.topology.num_edges) == (4, 2)
    assert (config.model.device, config.model.edge, config.model.cloud) == ("cnn3",) * 3
    assert (config.train.rounds, config.train.edge_rounds, config.train.local_epochs) == (2, 1, 1)
    assert config.train.lr == 0.05
    assert config.eval.batch_size == 200
    assert config.simulation.node_wait == 60.0


def test_the_cpu_profile() -> None:
    config = resolve(None, {"profile": "cpu"})

    assert config.profile == "cpu"
    assert (config.data.dataset, config.data.subset, config.data.partition) == (
        "cifar10", 0.1, "dirichlet")
    assert (config.topology.num_devices, config.topology.num_edges) == (20, 4)
    assert config.train.rounds == 20
    # Not set by the profile: the schema default.
    assert config.eval.batch_size == 500


def test_the_paper_profile() -> None:
    config = resolve(None, {"profile": "paper"})

    assert (config.topology.num_devices, config.topology.num_edges) == (225, 15)
    assert (config.train.rounds, config.train.batch_size, config.train.lr) == (500, 8, 0.001)
    assert (config.data.cutout, config.model.stem) == (16, "imagenet")


def test_the_method_picks_its_own_yaml() -> None:
    assert resolve(None, {"method": "fedavg"}).method == "fedavg"
    assert resolve(None, {"method": "hierfavg"}).method == "hierfavg"


# --- YAML files -----------------------------------------------------------------------------


def test_a_yaml_file_and_its_profile_section(config_file: Path) -> None:
    config = resolve(config_file)

    assert config.method == "fedavg"
    assert config.profile == "smoke"
    assert config.train.lr == 0.3  # profiles.smoke beats the file's top level
    assert config.train.rounds == 3  # the file beats the profile
    assert config.data.synthetic_train == 400  # from the smoke profile


def test_a_yaml_file_on_another_profile(config_file: Path) -> None:
    config = resolve(config_file, {"profile": "cpu"})

    assert config.profile == "cpu"
    assert config.data.dataset == "cifar10"  # the cpu profile
    assert config.train.lr == 0.2  # the file's top level beats the cpu profile's 0.05
    assert config.train.rounds == 3  # ... and its 20
    assert (config.topology.num_devices, config.topology.num_edges) == (8, 2)  # profiles.cpu


def test_overrides_beat_the_file(config_file: Path) -> None:
    config = resolve(config_file, parse_overrides(["train.lr=0.9", "method=hierfavg"]))

    assert config.train.lr == 0.9
    assert config.method == "hierfavg"


def test_a_file_can_choose_its_profile(tmp_path: Path) -> None:
    path = tmp_path / "cpu.yaml"
    path.write_text("profile: cpu\ntrain: {rounds: 4}\n")

    config = resolve(path)

    assert config.profile == "cpu"
    assert config.topology.num_devices == 20
    assert config.train.rounds == 4


def test_an_unknown_key_in_a_file_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train: {lrate: 0.1}\n")

    with pytest.raises(ConfigError, match="unknown config key 'train.lrate'") as caught:
        resolve(path)
    assert str(path) in str(caught.value)


def test_an_unknown_key_in_a_profile_section_names_the_section(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("profiles:\n  smoke: {topology: {edges: 3}}\n")

    with pytest.raises(ConfigError, match=r"profiles\.smoke.*'topology\.edges'"):
        resolve(path)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(tmp_path / "nope.yaml")


def test_a_malformed_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train: {lr: [0.1\n")

    with pytest.raises(ConfigError, match="is not valid YAML"):
        resolve(path)


def test_a_file_that_is_not_a_mapping_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")

    with pytest.raises(ConfigError, match="must hold a mapping"):
        resolve(path)


# --- overrides ------------------------------------------------------------------------------


def test_parse_overrides_nests_dotted_keys() -> None:
    assert parse_overrides(["train.lr=0.1"]) == {"train": {"lr": 0.1}}
    assert parse_overrides("train.lr=0.1 topology.num_edges=4 profile=cpu data.root=") == {
        "train": {"lr": 0.1}, "topology": {"num_edges": 4}, "profile": "cpu",
        "data": {"root": ""}}
    assert parse_overrides(["eval.edges=false", "data.root=/a=b"]) == {
        "eval": {"edges": False}, "data": {"root": "/a=b"}}
    assert parse_overrides([]) == {}


def test_parse_overrides_refuses_an_item_without_a_value() -> None:
    with pytest.raises(ConfigError, match="'train.lr' is not of the form key=value"):
        parse_overrides(["train.lr"])


def test_overrides_apply() -> None:
    config = resolve(None, parse_overrides(["train.lr=0.1", "topology.num_devices=6",
                                           "topology.num_edges=3", "seed=7"]))

    assert config.train.lr == 0.1
    assert (config.topology.num_devices, config.topology.num_edges) == (6, 3)
    assert config.seed == 7


def test_an_exponent_without_a_dot_is_still_a_float() -> None:
    # YAML 1.1 reads "1e-3" as a string; the schema turns it into the float it means.
    assert resolve(None, parse_overrides(["train.lr=1e-3"])).train.lr == pytest.approx(0.001)


@pytest.mark.parametrize(
    ("overrides", "key", "hint"),
    [
        ({"train": {"lrr": 0.1}}, "train.lrr", "did you mean train.lr?"),
        ({"topology": {"mobility_rate": 0.1}}, "topology.mobility_rate",
         "did you mean topology.mobility?"),
        ({"lr": 0.1}, "lr", "did you mean train.lr?"),  # by its last part
        ({"trian": {"lr": 0.1}}, "trian", "did you mean train?"),  # a section
        ({"train": {"epochs": 1}}, "train.epochs", "did you mean train.local_epochs?"),
        # nothing close: the names beside it, not every key
        ({"train": {"learning_rate": 0.1}}, "train.learning_rate",
         "the keys of 'train': batch_size, edge_rounds, local_epochs, lr, momentum, rounds, "
         "weight_decay"),
        ({"foo": 1}, "foo", "the top-level keys and sections: checkpoint, data,"),
    ],
)
def test_an_unknown_key_is_a_config_error_naming_it_and_the_closest(
        overrides: dict[str, Any], key: str, hint: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'") as caught:
        resolve(None, overrides)
    assert hint in str(caught.value)
    assert "simulation.torch_threads" not in str(caught.value)  # not a list of all ~80 keys


def test_close_keys_suggests_with_difflib() -> None:
    keys = ["train.lr", "train.rounds", "train.edge_rounds", "data.alpha"]
    assert close_keys("train.lrr", keys) == ["train.lr"]
    assert close_keys("rounds", keys) == ["train.rounds"]
    assert close_keys("model.width", keys) == []


@pytest.mark.parametrize(
    ("item", "key"),
    [
        ("topology.mobility=2", "topology.mobility"),
        ("topology.device_dropout=-0.1", "topology.device_dropout"),
        ("topology.num_edges=5", "topology.num_edges"),
        ("topology.orphans=drop", "topology.orphans"),
        ("data.dataset=foo", "data.dataset"),
        ("data.subset=0", "data.subset"),
        ("data.alpha=0", "data.alpha"),
        ("train.rounds=0", "train.rounds"),
        ("train.rounds=abc", "train.rounds"),
        ("train.lr=0", "train.lr"),
        ("train.edge_rounds=0", "train.edge_rounds"),
        ("model.device=vgg", "model.device"),
        ("model.large_fraction=1.5", "model.large_fraction"),
        ("eval.every=0", "eval.every"),
        ("simulation.timeout=0", "simulation.timeout"),
        ("method=bar", "method"),
        ("profile=baz", "profile"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_key(item: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(None, parse_overrides([item]))
    assert key in str(caught.value)


def test_a_bad_value_message_says_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match=r"bad value for 'topology\.mobility': 2\.0; "
                                          r"allowed: a probability in \[0, 1\]"):
        resolve(None, {"topology": {"mobility": 2}})


def test_a_scalar_for_a_section_names_the_section() -> None:
    with pytest.raises(ConfigError, match="'train'"):
        resolve(None, parse_overrides(["train=3"]))


@pytest.mark.parametrize("item", ["seed=-1", "eval.batch_size=0", "simulation.torch_threads=0",
                                  "train.momentum=-1", "train.weight_decay=-1", "data.cutout=-3"])
def test_values_that_fail_at_run_time_are_refused_up_front(item: str) -> None:
    key = item.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve(None, parse_overrides([item]))


# --- Flower's run_config ----------------------------------------------------------------------


def test_from_run_config_reads_method_profile_overrides_and_dotted_keys() -> None:
    config = from_run_config({"method": "fedavg", "profile": "smoke", "config-file": "",
                              "overrides": "train.lr=0.1 topology.num_edges=1", "out": "",
                              "data.root": "/data/here", "train.rounds": 5})

    assert config.method == "fedavg"
    assert config.profile == "smoke"
    assert config.train.lr == 0.1
    assert config.topology.num_edges == 1
    assert config.data.root == "/data/here"
    assert config.train.rounds == 5


def test_from_run_config_ignores_empty_strings() -> None:
    # pyproject's [tool.flwr.app.config] defaults: empty strings mean "not set".
    config = from_run_config({"method": "", "profile": "", "config-file": "", "overrides": "",
                              "out": "", "data.root": ""})

    assert config == resolve()


def test_from_run_config_overrides_string_beats_dotted_keys() -> None:
    config = from_run_config({"train.lr": 0.2, "overrides": "train.lr=0.4"})

    assert config.train.lr == 0.4


def test_from_run_config_reads_a_config_file(config_file: Path) -> None:
    config = from_run_config({"config-file": str(config_file), "profile": "cpu"})

    assert config == resolve(config_file, {"profile": "cpu"})
    assert config.topology.num_devices == 8


def test_from_run_config_refuses_an_unknown_key() -> None:
    with pytest.raises(ConfigError, match="unknown run_config key 'num-rounds'; did you mean "
                                          r"train.rounds\?"):
        from_run_config({"method": "hierfavg", "num-rounds": 3})


def test_from_run_config_refuses_a_bad_value() -> None:
    with pytest.raises(ConfigError, match="train.rounds"):
        from_run_config({"train.rounds": 0})


def test_config_json_round_trips() -> None:
    config = resolve(None, parse_overrides(["method=fedavg", "train.lr=0.125", "seed=3",
                                           "data.root=/x", "topology.orphans=cloud"]))

    text = to_json(config)

    assert from_json(text) == config
    assert from_run_config({"config-json": text, "method": "hierfavg"}) == config
    assert to_json(from_json(text)) == text


def test_to_dict_covers_every_schema_key() -> None:
    flat: dict[str, Any] = {}

    def walk(tree: dict[str, Any], prefix: str = "") -> None:
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(to_dict(resolve()))

    assert sorted(flat) == sorted(flat_keys())
    assert flat["train.lr"] == 0.05


def test_from_json_refuses_bad_json_and_bad_values() -> None:
    with pytest.raises(ConfigError, match="not valid JSON"):
        from_json("{method: ")
    with pytest.raises(ConfigError, match="'method'"):
        from_json('{"method": "bar"}')
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        from_json('{"nope": 1}')
