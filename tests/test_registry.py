"""The method registry: config, server and devices agree for every registered method."""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Message, RecordDict

from flower_eec.app.client_app import app
from flower_eec.errors import ConfigError
from flower_eec.grid.local import LocalGrid
from flower_eec.protocol import names
from flower_eec.run import experiment
from flower_eec.run.config import PROFILES, flat_keys, from_json, resolve, to_dict, to_json
from flower_eec.run.registry import methods

PACKAGE = Path(__file__).resolve().parents[1] / "flower_eec"
NAMES = sorted(methods())


def test_every_method_ships_defaults_that_resolve_for_every_profile() -> None:
    for name, entry in methods().items():
        assert entry.defaults.is_file(), entry.defaults
        assert entry.defaults.is_relative_to(PACKAGE)
        for profile in PROFILES:
            config = resolve(name, {"profile": profile})
            assert (config.method, config.profile) == (name, profile)


def test_every_section_is_a_config_section_with_its_defaults() -> None:
    for name, entry in methods().items():
        config = resolve(name, {"profile": "smoke"})
        for section, knobs in entry.sections.items():
            assert isinstance(getattr(config, section), knobs), (name, section)
            assert set(to_dict(config)[section]) == {f.name for f in dataclasses.fields(knobs)}


def test_a_method_section_is_reachable_by_every_config_way(tmp_path: Path) -> None:
    config = resolve("fedagg", {"fedagg": {"T": 5.0}, "fedin": {"mu": 0.5}})
    assert (config.fedagg.T, config.fedin.mu) == (5.0, 0.5)
    assert from_json(to_json(config)).fedagg.T == 5.0
    assert "fedagg.T" in flat_keys() and "eclm.top_k" in flat_keys()
    with pytest.raises(ConfigError, match="fedagg.T"):
        resolve("fedagg", {"fedagg": {"T": 0}})
    with pytest.raises(ConfigError, match="unknown config key 'fedagg.temperature'"):
        resolve("fedagg", {"fedagg": {"temperature": 3}})


def test_the_client_app_answers_every_registered_device_handler() -> None:
    grid = LocalGrid(app, 1, {"config-json": to_json(resolve("hierfavg", {}))})
    [reply] = grid.send_and_receive(
        [Message(RecordDict(), dst_node_id=next(iter(grid.get_node_ids())),
                 message_type=names.DESCRIBE)])
    handlers = reply.content.config_records[names.DESCRIPTION][names.HANDLERS]
    assert isinstance(handlers, list)
    answered = set(handlers)
    for name, entry in methods().items():
        handled = set(type(entry.device()).handlers)
        assert handled, f"{name}'s device registers no handler"
        assert handled <= answered, f"{name}: {sorted(handled - answered)} not answered"


def test_no_method_name_is_compared_outside_the_registry() -> None:
    pattern = re.compile(r"\.method\s*(==|!=|\bin\b|\bnot in\b)")
    offenders = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if pattern.search(line)]
    assert offenders == []


@pytest.mark.parametrize("name", NAMES)
def test_one_smoke_round_of_every_method_has_no_failed_device(name: str, tmp_path: Path) -> None:
    overrides: dict[str, Any] = {"profile": "smoke", "out": str(tmp_path),
                                 "train": {"rounds": 1}}
    config = resolve(name, overrides)
    grid = LocalGrid(app, config.topology.num_devices, {"config-json": to_json(config)})
    results = experiment.run(grid, config)
    [row] = results["rounds"]
    assert row["devices"]["failures"] == 0, row
    assert 0.0 <= row["cloud"]["accuracy"] <= 1.0


def test_a_config_survives_pickling() -> None:
    config = resolve("fedeec", {"fedeec": {"skr": "both"}})
    again = pickle.loads(pickle.dumps(config))
    assert (type(again), again.fedeec.skr) == (type(config), "both")
    assert to_dict(again) == to_dict(config)
