"""FedEEC: SKR in each direction, off == FedAgg to the bit, stores through moves and drops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp
from torch import nn

from flower_eec.clients import device as device_module
from flower_eec.clients import fedagg as device_side
from flower_eec.clients.device import register
from flower_eec.core.bsbodp import Distillation, distil_pass
from flower_eec.core.losses import SKR
from flower_eec.errors import ConfigError
from flower_eec.grid.local import LocalGrid
from flower_eec.models.bridge import load_bridge
from flower_eec.protocol import names
from flower_eec.run import experiment
from flower_eec.run.config import Config, resolve, to_json
from flower_eec.run.devices import build_device_model
from flower_eec.run.federated import federated_data
from flower_eec.run.methods import fedagg as fedagg_methods
from flower_eec.run.methods import weights as weights_methods
from flower_eec.strategies import FedEEC
from flower_eec.strategies import fedagg as server_side
from flower_eec.strategies.hierarchical import RoundReport
from flower_eec.topology import Topology

app = ClientApp()  # our app's FedAgg/FedEEC and HierFAVG devices, as the project's ClientApp
register(app, fedagg_methods.app_device(), weights_methods.app_device())


def smoke(out: Path, **overrides: Any) -> Config:
    return resolve(None, {"method": "fedeec", "profile": "smoke", "out": str(out), **overrides})


def build(config: Config, topology: Topology | None = None,
          on_round: Any = None) -> server_side.FedAgg:
    torch.manual_seed(config.seed)
    initial = ArrayRecord(build_device_model(config, federated_data(config),
                                             config.model.cloud).state_dict())
    build_strategy = {"fedagg": fedagg_methods.fedagg_strategy,
                      "fedeec": fedagg_methods.fedeec_strategy}[config.method]
    return build_strategy(config, initial, topology=topology or experiment.build_topology(config),
                          on_round=on_round, evaluate_edges=False)


def cloud_state(config: Config) -> dict[str, torch.Tensor]:
    strategy = build(config)
    grid = LocalGrid(app, config.topology.num_devices, {"config-json": to_json(config)})
    strategy.start(grid, server_side.state_record(strategy.cloud_model),
                   num_rounds=config.train.rounds)
    return {k: v.clone() for k, v in strategy.cloud_model.state_dict().items()}


# --- SKR in one pass ------------------------------------------------------------------------


def one_pass(teacher: torch.Tensor, skr: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    samples, labels = torch.randn(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    settings = Distillation(lr=0.1, batch_size=3, skr=SKR() if skr else None)
    distil_pass(student, samples, labels, teacher, settings, shuffle=False)
    return student.state_dict()


def test_skr_changes_a_pass_only_where_the_teacher_is_wrong() -> None:
    right = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).float() * 4
    for key, value in one_pass(right, skr=True).items():
        assert torch.equal(value, one_pass(right, skr=False)[key])
    wrong = right.roll(1, dims=1)  # every sample's top class is the next one
    assert not torch.equal(one_pass(wrong, skr=True)["1.weight"],
                           one_pass(wrong, skr=False)["1.weight"])


# --- the method -----------------------------------------------------------------------------


def test_skr_off_is_fedagg_to_the_bit(tmp_path: Path) -> None:
    fedagg = cloud_state(smoke(tmp_path / "a", method="fedagg"))
    off = cloud_state(smoke(tmp_path / "b", fedeec={"skr": "off"}))
    assert all(torch.equal(fedagg[k], off[k]) for k in fedagg)
    upward = cloud_state(smoke(tmp_path / "c"))
    assert not all(torch.equal(fedagg[k], upward[k]) for k in fedagg)


@pytest.mark.parametrize(("mode", "expected"), [
    ("upward", {"device": False, "edge<-device": True, "edge<-cloud": False,
                "cloud<-edge": True}),
    ("both", {"device": True, "edge<-device": True, "edge<-cloud": True, "cloud<-edge": True}),
    ("off", {"device": False, "edge<-device": False, "edge<-cloud": False,
             "cloud<-edge": False}),
])
def test_skr_mode_decides_each_direction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         mode: str, expected: dict[str, bool]) -> None:
    seen: dict[str, set[bool]] = {}
    learn, device_pass = server_side.BridgeEdge.learn, device_side.distil_pass

    def server_learns(edge: server_side.BridgeEdge, devices: Any, teacher: Any, key: int,
                      settings: Distillation | None = None) -> Any:
        if edge.name == "cloud":
            direction = "cloud<-edge"
        else:
            direction = "edge<-device" if settings is None else "edge<-cloud"
        seen.setdefault(direction, set()).add((settings or edge.settings).skr is not None)
        return learn(edge, devices, teacher, key, settings)

    def device_learns(*args: Any, **kwargs: Any) -> Any:
        seen.setdefault("device", set()).add(args[4].skr is not None)
        return device_pass(*args, **kwargs)

    monkeypatch.setattr(server_side.BridgeEdge, "learn", server_learns)
    monkeypatch.setattr(device_side, "distil_pass", device_learns)
    config = smoke(tmp_path, train={"rounds": 1}, fedeec={"skr": mode})
    strategy = build(config)
    assert isinstance(strategy, FedEEC) and strategy.skr == mode
    grid = LocalGrid(app, 4, {"config-json": to_json(config)})
    strategy.start(grid, server_side.state_record(strategy.cloud_model), num_rounds=1)
    assert seen == {direction: {skr} for direction, skr in expected.items()}


def test_config_and_strategy_name_a_bad_skr_mode() -> None:
    with pytest.raises(ConfigError, match="fedeec.skr"):
        resolve(None, {"method": "fedeec", "fedeec": {"skr": "down"}})
    with pytest.raises(ValueError, match="skr must be one of"):
        FedEEC(topology=Topology(2, 1), cloud_model=nn.Linear(1, 1), edge_model=nn.Linear(1, 1),
               bridge=load_bridge(), mean=(0,), std=(1,), num_classes=1, skr="down")


# --- dynamics -------------------------------------------------------------------------------


class Dynamics:
    """The ClientApp, except that ``crash_device`` raises on its train message of
    ``crash_round``; notes which devices are asked for their codes."""

    def __init__(self, crash_device: int, crash_round: int) -> None:
        self.crash = (crash_device, crash_round)
        self.embedded: list[int] = []
        self.app = ClientApp()  # registered now, so that a patched handler is the one bound
        fedagg_methods.app_device().register(self.app)

    def __call__(self, msg: Message, context: Context) -> Message:
        device = int(context.node_config["partition-id"])
        kind = msg.metadata.message_type
        sent = msg.content.config_records.get("config")
        if kind == "query.embed":
            self.embedded.append(device)
        if kind == names.DISTIL and sent is not None and (
                device, sent[names.SERVER_ROUND]) == self.crash:
            raise RuntimeError("device crashed")
        return self.app(msg, context)


def test_stores_follow_every_move_and_drop(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    config = smoke(tmp_path, topology={"num_devices": 8, "num_edges": 3})
    topology = Topology(8, 3, seed=5, mobility_rate=0.3, device_dropout=0.2,
                        edge_outages=((1, 3, 4),), orphans="cloud")
    resumed: dict[int, list[bool]] = {}  # per device and training: did it go on from a kept model
    distil = device_side.FedAggDevice.distil

    def watch(device: device_side.FedAggDevice, msg: Message, context: Context) -> Message:
        resumed.setdefault(int(context.node_config["partition-id"]), []).append(
            device_module.KEPT_MODEL in context.state.array_records)
        return distil(device, msg, context)

    monkeypatch.setattr(device_side.FedAggDevice, "distil", watch)
    members: dict[int, set[int]] = {}
    seen: set[int] = set()
    checked: list[int] = []

    def check(report: RoundReport) -> None:
        view = topology.at_round(report.round)
        seen.update(view.participants())
        assert set(strategy.store.devices()) == seen  # the cloud holds everyone's codes
        moved_in = 0
        for edge in range(3):
            if not view.edge_online[edge]:
                continue
            attached = set(np.flatnonzero(view.edge_of == edge).tolist()) & seen
            assert strategy.bridges[edge].members == attached
            moved_in += sum(strategy.store.embedding_bytes(d)
                            for d in attached - members.get(edge, set()))
            members[edge] = attached
        if report.round > 1:  # codes that follow a device come down from the cloud's copy
            assert report.link_bytes.get("cloud_to_edge", 0) >= moved_in
        if report.round == 2:
            assert "device crashed" in report.failure_reasons[4]
        checked.append(report.round)

    strategy = build(config, topology, check)
    client = Dynamics(crash_device=4, crash_round=2)
    grid = LocalGrid(client, 8, {"config-json": to_json(config)})
    strategy.start(grid, server_side.state_record(strategy.cloud_model), num_rounds=5)

    assert checked == [1, 2, 3, 4, 5]
    moved = {d for r in range(2, 6) for d, _, _ in topology.moves(r)}
    assert moved, "the seeded schedule moves nobody: pick another seed"
    assert not any(topology.at_round(r).edge_online[1] for r in (3, 4))
    assert topology.at_round(2).device_online[4] and not topology.at_round(2).device_online[3]
    # codes were uploaded once per device, however often it moved
    assert sorted(client.embedded) == sorted(seen)
    # a device trains from a fresh model once, then always from the one it kept, wherever it is
    assert all(not kept[0] and all(kept[1:]) for kept in resumed.values())
    assert any(len(resumed.get(d, [])) > 1 for d in moved)


def test_hierfavg_meets_the_same_moves_and_drops(tmp_path: Path) -> None:
    config = resolve(None, {"method": "hierfavg", "profile": "smoke", "out": str(tmp_path),
                            "train": {"rounds": 3},
                            "topology": {"num_devices": 6, "num_edges": 3, "mobility": 0.4,
                                         "device_dropout": 0.2, "edge_outages": [[0, 2, 2]]}})
    grid = LocalGrid(app, 6, {"config-json": to_json(config)})
    summary = experiment.run(grid, config)
    topology = experiment.build_topology(config)
    sizes = [len(i) for i in federated_data(config).train_indices]
    assert sum(len(topology.moves(r)) for r in (2, 3)) > 0
    for row in summary["rounds"]:
        view = topology.at_round(row["round"])
        online = set(view.participants())
        assert row["devices"]["participants"] == len(online)
        assert row["devices"]["failures"] == 0
        for edge in row["edges"]:
            attached = [d for d in online if view.edge_of[d] == edge["edge"]]
            assert edge["examples"] == sum(sizes[d] for d in attached)
    assert summary["rounds"][1]["edges"][0]["examples"] == 0  # edge 0's outage
