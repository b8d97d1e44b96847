"""Tests of the Hierarchical cloud tier on an in-process grid with hand-made devices.

Each fake device ``d`` (partition id) replies to a train message with the received ``w`` plus ``d``
and ``num-examples = d + 1``, so every edge and cloud average has a closed form. With 4 devices on
2 edges (contiguous: edge 0 = devices 0, 1; edge 1 = devices 2, 3) one edge round gives
edge 0: w + (1*0 + 2*1)/3 = w + 2/3 over 3 examples; edge 1: w + (3*2 + 4*3)/7 = w + 18/7 over 7;
cloud: (3*(w + 2/3) + 7*(w + 18/7))/10 = w + 2.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg, FedProx, Result, Strategy

from flower_eec.errors import ConfigError, ProtocolError
from flower_eec.grid.local import LocalGrid
from flower_eec.strategies.hierarchical import CLOUD_DIRECT, Hierarchical, RoundReport
from flower_eec.strategies.hierfedavg import HierFedAvg
from flower_eec.topology import Topology

W0 = np.array([1.0, -2.0], np.float32)


def initial() -> ArrayRecord:
    return ArrayRecord({"w": Array(W0.copy())})


def edge_fedavg(fraction_evaluate: float = 0.0) -> FedAvg:
    return FedAvg(min_available_nodes=1, min_train_nodes=1, min_evaluate_nodes=1,
                  fraction_evaluate=fraction_evaluate)


def w(arrays: ArrayRecord) -> np.ndarray:
    return arrays["w"].numpy()


@dataclass
class FakeDevices:
    """A ClientApp stand-in: behaviour per partition id, and a log of every message received."""

    broken: dict[int, Callable[[Message, int], Message]] = field(default_factory=dict)
    describe: Callable[[int], int] | None = lambda pid: pid
    examples: Callable[[int], int] = lambda pid: pid + 1
    loss: Callable[[int], float] | None = None  # a train metric, when given
    received: list[tuple[str, int, dict]] = field(default_factory=list)

    def __call__(self, message: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        kind = message.metadata.message_type
        config = message.content.config_records.get("config", ConfigRecord())
        self.received.append((kind, message.metadata.dst_node_id, dict(config)))
        if kind == "query.describe":
            if self.describe is None:  # as a ClientApp without the handler answers
                raise ValueError("No query function registered with name 'describe'")
            info = ConfigRecord({"partition-id": self.describe(pid)})
            return Message(RecordDict({"describe": info}), reply_to=message)
        if kind == "evaluate":
            metrics = MetricRecord({"accuracy": pid / 10, "num-examples": pid + 1})
            return Message(RecordDict({"metrics": metrics}), reply_to=message)
        if pid in self.broken:
            return self.broken[pid](message, pid)
        extra = {} if self.loss is None else {"loss": self.loss(pid)}
        return train_reply(message, w(message.content.array_records["arrays"]) + pid,
                           self.examples(pid), **extra)

    def nodes(self, kind: str) -> list[int]:
        return [node for k, node, _ in self.received if k == kind]

    def train_rounds(self) -> list[int]:
        return self.rounds("train")

    def rounds(self, kind: str) -> list[int]:
        return [int(config["server-round"]) for k, _, config in self.received if k == kind]


def train_reply(message: Message, values: np.ndarray, examples: float,
                **metrics: float) -> Message:
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.asarray(values))}),
                          "metrics": MetricRecord({"num-examples": examples, **metrics})})
    return Message(content, reply_to=message)


def raises(message: Message, pid: int) -> Message:
    raise RuntimeError(f"boom on device {pid}")


def nan_reply(message: Message, pid: int) -> Message:
    return train_reply(message, np.array([np.nan, 0.0], np.float32), pid + 1)


def wrong_shape(message: Message, pid: int) -> Message:
    return train_reply(message, np.zeros(3, np.float32), pid + 1)


def wrong_dtype(message: Message, pid: int) -> Message:
    return train_reply(message, np.zeros(2, np.float64), pid + 1)


def no_examples(message: Message, pid: int) -> Message:
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(2, np.float32))}),
                          "metrics": MetricRecord({"loss": 1.0})})
    return Message(content, reply_to=message)


def zero_examples(message: Message, pid: int) -> Message:
    return train_reply(message, np.zeros(2, np.float32), 0)


def extra_metric(message: Message, pid: int) -> Message:
    return train_reply(message, w(message.content.array_records["arrays"]) + pid, pid + 1,
                       extra=5.0)


@dataclass
class Run:
    strategy: Hierarchical
    devices: FakeDevices
    reports: list[RoundReport]
    result: Result

    @property
    def cloud(self) -> np.ndarray:
        return w(self.result.arrays)

    def edge(self, group: int) -> np.ndarray:
        return w(self.strategy.edge_arrays[group])


def run(devices: FakeDevices | None = None, *, rounds: int = 1, edge_rounds: int = 1,
        topology: Topology | None = None, edge: Strategy | Callable[[int], Strategy] | None = None,
        drop: Callable[[Message], bool] | None = None, num_nodes: int = 4) -> Run:
    devices = devices or FakeDevices()
    reports: list[RoundReport] = []
    strategy = Hierarchical(edge=edge or edge_fedavg(),
                            topology=topology or Topology(num_devices=4, num_edges=2),
                            edge_rounds=edge_rounds, on_round=reports.append, node_wait=0.01)
    grid = LocalGrid(devices, num_nodes, drop=drop)
    result = strategy.start(grid, initial(), num_rounds=rounds, timeout=5.0)
    return Run(strategy, devices, reports, result)


# --- the closed forms -----------------------------------------------------------------------


def test_one_round_gives_the_known_edge_and_cloud_averages() -> None:
    r = run()

    np.testing.assert_allclose(r.edge(0), W0 + 2 / 3, rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.edge(1), W0 + 18 / 7, rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.cloud, W0 + 2, rtol=0, atol=1e-6)
    assert r.result.arrays["w"].numpy().dtype == np.float32
    [report] = r.reports
    assert report.round == 1
    assert report.edges == [{"edge": 0, "examples": 3.0}, {"edge": 1, "examples": 7.0}]
    assert report.participants == 4
    assert report.failures == 0
    assert report.failure_reasons == {}


def test_cloud_weights_edges_by_their_examples_not_equally() -> None:
    # An unweighted mean of the two edges would be w + (2/3 + 18/7)/2 = w + 1.619...
    r = run()

    assert not np.allclose(r.cloud, W0 + (2 / 3 + 18 / 7) / 2)


def test_two_rounds_start_from_the_cloud_model() -> None:
    r = run(rounds=2)

    # Round 2 starts every edge from w + 2: edges w + 2 + 2/3, w + 2 + 18/7; cloud w + 4.
    np.testing.assert_allclose(r.edge(0), W0 + 2 + 2 / 3, rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.edge(1), W0 + 2 + 18 / 7, rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.cloud, W0 + 4, rtol=0, atol=1e-6)
    assert [report.round for report in r.reports] == [1, 2]
    assert sorted(r.devices.nodes("train")) == [1000, 1000, 1001, 1001, 1002, 1002, 1003, 1003]
    assert r.devices.train_rounds() == [1] * 4 + [2] * 4


def test_two_edge_rounds_per_cloud_round() -> None:
    r = run(edge_rounds=2)

    # Each edge aggregates twice before the cloud: edge 0 w + 4/3, edge 1 w + 36/7; the examples
    # of both edge rounds weight the cloud: (6*(w + 4/3) + 14*(w + 36/7))/20 = w + 4.
    np.testing.assert_allclose(r.edge(0), W0 + 4 / 3, rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.edge(1), W0 + 36 / 7, rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.cloud, W0 + 4, rtol=0, atol=1e-6)
    [report] = r.reports
    assert report.edges == [{"edge": 0, "examples": 6.0}, {"edge": 1, "examples": 14.0}]
    # Edge rounds are numbered on: cloud round 1 holds edge rounds 1 and 2.
    assert r.devices.train_rounds() == [1] * 4 + [2] * 4


def test_edge_rounds_and_cloud_rounds_are_numbered_on() -> None:
    r = run(rounds=2, edge_rounds=2)

    assert r.devices.train_rounds() == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    np.testing.assert_allclose(r.cloud, W0 + 8, rtol=0, atol=1e-5)


def test_the_callers_arrays_and_config_are_not_modified() -> None:
    arrays = initial()
    config = ConfigRecord({"lr": 0.1})
    strategy = Hierarchical(edge=edge_fedavg(), topology=Topology(num_devices=4, num_edges=2),
                            node_wait=0.01)

    strategy.start(LocalGrid(FakeDevices(), 4), arrays, num_rounds=1, train_config=config)

    np.testing.assert_array_equal(w(arrays), W0)
    assert dict(config) == {"lr": 0.1}


def test_train_config_reaches_the_devices() -> None:
    devices = FakeDevices()
    strategy = Hierarchical(edge=edge_fedavg(), topology=Topology(num_devices=4, num_edges=2),
                            node_wait=0.01)

    strategy.start(LocalGrid(devices, 4), initial(), num_rounds=1,
                   train_config=ConfigRecord({"lr": 0.25}))

    configs = [c for k, _, c in devices.received if k == "train"]
    assert len(configs) == 4
    assert all(c["lr"] == 0.25 for c in configs)


# --- failures -------------------------------------------------------------------------------


def test_a_device_that_raises_fails_alone() -> None:
    r = run(FakeDevices(broken={1: raises}))

    # Edge 0 has only device 0 (w + 0, 1 example); the cloud: (1*w + 7*(w + 18/7))/8 = w + 2.25.
    np.testing.assert_allclose(r.edge(0), W0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.edge(1), W0 + 18 / 7, rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.cloud, W0 + 2.25, rtol=0, atol=1e-6)
    [report] = r.reports
    assert report.failures == 1
    assert list(report.failure_reasons) == [1]
    assert "boom on device 1" in report.failure_reasons[1]
    assert report.edges[0]["examples"] == 1.0


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        (nan_reply, "NaN"),
        (wrong_shape, "float32[3], expected float32[2]"),
        (wrong_dtype, "float64[2], expected float32[2]"),
        (no_examples, "lacks a numeric 'num-examples'"),
        (zero_examples, "'num-examples' is 0"),
    ],
    ids=["nan", "shape", "dtype", "no-examples", "zero-examples"],
)
def test_a_bad_reply_is_rejected_and_the_rest_aggregated(
        broken: Callable[[Message, int], Message], reason: str) -> None:
    r = run(FakeDevices(broken={3: broken}))

    # Edge 1 has only device 2 (w + 2, 3 examples); the cloud: (3*(w + 2/3) + 3*(w + 2))/6.
    np.testing.assert_allclose(r.edge(1), W0 + 2, rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.cloud, W0 + 4 / 3, rtol=0, atol=1e-6)
    [report] = r.reports
    assert report.failures == 1
    assert reason in report.failure_reasons[3]
    assert report.edges == [{"edge": 0, "examples": 3.0}, {"edge": 1, "examples": 3.0}]


def test_an_extra_metric_does_not_cost_the_edge_its_round() -> None:
    r = run(FakeDevices(broken={0: extra_metric}))

    np.testing.assert_allclose(r.edge(0), W0 + 2 / 3, rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.cloud, W0 + 2, rtol=0, atol=1e-6)
    assert r.reports[0].failures == 0


def test_a_device_that_times_out_is_counted_as_failed() -> None:
    def drop(message: Message) -> bool:
        return message.metadata.dst_node_id == 1002 and message.metadata.message_type == "train"

    r = run(drop=drop)

    # Edge 1 has only device 3 (w + 3, 4 examples); the cloud: (3*(w + 2/3) + 4*(w + 3))/7 = w + 2.
    np.testing.assert_allclose(r.edge(1), W0 + 3, rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.cloud, W0 + 2, rtol=0, atol=1e-6)
    [report] = r.reports
    assert report.failures == 1
    assert report.failure_reasons == {2: "no reply before the time-out"}


def test_an_edge_whose_devices_all_fail_keeps_its_model_and_is_left_out() -> None:
    r = run(FakeDevices(broken={0: raises, 1: nan_reply}))

    np.testing.assert_array_equal(r.edge(0), W0)
    np.testing.assert_allclose(r.cloud, W0 + 18 / 7, rtol=0, atol=1e-6)
    [report] = r.reports
    assert report.failures == 2
    assert sorted(report.failure_reasons) == [0, 1]
    assert report.edges == [{"edge": 0, "examples": 0.0}, {"edge": 1, "examples": 7.0}]
    # Only edge 1 uploads to the cloud.
    assert report.link_bytes.get("edge_to_cloud", 0) == r.strategy.edge_arrays[1].count_bytes()


def test_when_every_device_fails_the_cloud_keeps_its_model() -> None:
    r = run(FakeDevices(broken={d: raises for d in range(4)}), rounds=2)

    np.testing.assert_array_equal(r.cloud, W0)
    assert [report.failures for report in r.reports] == [4, 4]
    assert all(sorted(report.failure_reasons) == [0, 1, 2, 3] for report in r.reports)
    assert all(report.link_bytes.get("edge_to_cloud", 0) == 0 for report in r.reports)
    assert r.result.train_metrics_clientapp == {}


# --- discovery ------------------------------------------------------------------------------


def test_devices_are_placed_by_the_partition_id_they_describe() -> None:
    # Node 1000 + p says it is device 3 - p: edge 0 holds nodes 1003 (w + 3, 4 examples) and
    # 1002 (w + 2, 3 examples) = w + 18/7; edge 1 holds nodes 1001 and 1000 = w + 2/3.
    r = run(FakeDevices(describe=lambda pid: 3 - pid))

    assert r.strategy.node_of == {0: 1003, 1: 1002, 2: 1001, 3: 1000}
    np.testing.assert_allclose(r.edge(0), W0 + 18 / 7, rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.edge(1), W0 + 2 / 3, rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.cloud, W0 + 2, rtol=0, atol=1e-6)
    assert sorted(r.devices.nodes("query.describe")) == [1000, 1001, 1002, 1003]


def test_without_describe_devices_are_placed_by_sorted_node_id(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="flwr"):
        r = run(FakeDevices(describe=None))

    assert r.strategy.node_of == {0: 1000, 1: 1001, 2: 1002, 3: 1003}
    np.testing.assert_allclose(r.edge(0), W0 + 2 / 3, rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.cloud, W0 + 2, rtol=0, atol=1e-6)
    assert r.reports[0].failures == 0
    # One node is asked; its error reply gives one INFO line, not one error per node.
    assert r.devices.nodes("query.describe") == [1000]
    lines = [rec for rec in caplog.records if "query.describe" in rec.getMessage()]
    assert [rec.levelno for rec in lines] == [logging.INFO]
    assert "does not answer query.describe (it has no handler for it)" in lines[0].getMessage()


def test_a_clientapp_without_a_describe_handler_is_named_as_such(
        caplog: pytest.LogCaptureFixture) -> None:
    # A real ClientApp without the handler: Flower's own error, as a standard app gives it.
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return train_reply(msg, w(msg.content.array_records["arrays"]) + 1, 1)

    strategy = Hierarchical(edge=edge_fedavg(), topology=Topology(num_devices=4, num_edges=2),
                            node_wait=0.01)
    with caplog.at_level(logging.INFO, logger="flwr"):
        result = strategy.start(LocalGrid(app, 4), initial(), num_rounds=1)

    np.testing.assert_allclose(w(result.arrays), W0 + 1, rtol=0, atol=1e-6)
    assert [rec.getMessage() for rec in caplog.records if "describe" in rec.getMessage()] == [
        "The ClientApp does not answer query.describe (it has no handler for it): placing 4 "
        "devices by sorted node id"]


def test_discover_false_sends_no_describe() -> None:
    devices = FakeDevices()
    strategy = Hierarchical(edge=edge_fedavg(), topology=Topology(num_devices=4, num_edges=2),
                            node_wait=0.01, discover=False)

    result = strategy.start(LocalGrid(devices, 4), initial(), num_rounds=1)

    assert devices.nodes("query.describe") == []
    assert strategy.node_of == {0: 1000, 1: 1001, 2: 1002, 3: 1003}
    np.testing.assert_allclose(w(result.arrays), W0 + 2, rtol=0, atol=1e-6)


def test_a_duplicate_partition_id_stops_the_run_naming_it() -> None:
    with pytest.raises(ProtocolError,
                       match=r"several nodes claim one partition-id \(\{2: \[1002, 1003\]\}"):
        run(FakeDevices(describe=lambda pid: min(pid, 2)))


def test_a_partition_id_out_of_range_stops_the_run_naming_the_fix() -> None:
    with pytest.raises(ProtocolError, match="partition-id 7; the 4 devices must be 0 .. 3"):
        run(FakeDevices(describe=lambda pid: pid + 4 if pid == 3 else pid))


def test_a_device_whose_describe_fails_stops_the_run_with_its_reason() -> None:
    devices = FakeDevices(describe=lambda pid: pid if pid != 2 else 1 // 0)
    with pytest.raises(ProtocolError, match="node 1002 failed to describe itself.*division"):
        run(devices)


def describe_dropped(nodes: set[int], times: int) -> Callable[[Message], bool]:
    """Drop the first ``times`` describe messages to each of ``nodes`` (a slow start)."""
    dropped: dict[int, int] = {}

    def drop(message: Message) -> bool:
        node = message.metadata.dst_node_id
        if message.metadata.message_type != "query.describe" or node not in nodes:
            return False
        dropped[node] = dropped.get(node, 0) + 1
        return dropped[node] <= times

    return drop


def test_a_node_silent_at_first_is_asked_again_and_placed_by_its_partition_id() -> None:
    # devices describe themselves as 3 - pid: a fallback to node ids would be visible
    devices = FakeDevices(describe=lambda pid: 3 - pid)
    strategy = Hierarchical(edge=edge_fedavg(), topology=Topology(num_devices=4, num_edges=2),
                            node_wait=30.0)
    grid = LocalGrid(devices, 4, drop=describe_dropped({1002}, times=2))

    strategy.start(grid, initial(), num_rounds=1, timeout=0.01)  # a round timeout far too short

    assert strategy.node_of == {0: 1003, 1: 1002, 2: 1001, 3: 1000}
    # node 1002 got the third ask (two were dropped), after the others had answered
    assert devices.nodes("query.describe") == [1000, 1001, 1003, 1002]


def test_a_node_that_never_describes_itself_stops_the_run() -> None:
    grid = LocalGrid(FakeDevices(), 4, drop=describe_dropped({1002}, times=10**6))
    strategy = Hierarchical(edge=edge_fedavg(), topology=Topology(num_devices=4, num_edges=2),
                            node_wait=0.01)
    with pytest.raises(ProtocolError, match=r"1 node\(s\) \(\[1002\]\) gave no answer to "
                                            r"query.describe within 0.01 s.*node_wait"):
        strategy.start(grid, initial(), num_rounds=1)


@pytest.mark.parametrize("num_nodes", [3, 5])
def test_a_node_count_mismatch_is_a_config_error(num_nodes: int) -> None:
    with pytest.raises(ConfigError, match=f"the federation has {num_nodes} nodes but "
                                          "topology.num_devices is 4"):
        run(num_nodes=num_nodes)


# --- topology -------------------------------------------------------------------------------


def dropout_topology() -> tuple[Topology, list[int]]:
    """A topology whose round 1 has some devices offline on both edges' account."""
    for seed in range(100):
        topology = Topology(num_devices=4, num_edges=2, device_dropout=0.5, seed=seed)
        online = np.flatnonzero(topology.at_round(1).device_online).tolist()
        if online in ([0, 2, 3], [1, 2, 3], [0, 1, 2], [0, 1, 3]):
            return topology, online
    raise AssertionError("no seed below 100 leaves three devices online")


def test_offline_devices_get_no_message() -> None:
    topology, online = dropout_topology()

    r = run(topology=topology)

    assert sorted(r.devices.nodes("train")) == [1000 + d for d in online]
    [report] = r.reports
    assert report.participants == 3
    assert report.failures == 0
    # The cloud is the example-weighted mean of the online devices' w + d.
    weights = [d + 1 for d in online]
    expected = W0 + sum(d * (d + 1) for d in online) / sum(weights)
    np.testing.assert_allclose(r.cloud, expected, rtol=0, atol=1e-6)


def test_an_offline_edge_sits_out_when_orphans_skip() -> None:
    topology = Topology(num_devices=4, num_edges=2, edge_outages=((0, 1, 1),))

    r = run(topology=topology)

    assert sorted(r.devices.nodes("train")) == [1002, 1003]
    np.testing.assert_allclose(r.cloud, W0 + 18 / 7, rtol=0, atol=1e-6)
    [report] = r.reports
    assert report.participants == 2
    assert report.edges == [{"edge": 0, "examples": 0.0}, {"edge": 1, "examples": 7.0}]
    assert report.link_bytes.get("cloud_to_edge", 0) == r.result.arrays.count_bytes()


def test_orphans_of_an_offline_edge_attach_to_the_cloud() -> None:
    topology = Topology(num_devices=4, num_edges=2, edge_outages=((0, 1, 1),), orphans="cloud")

    r = run(topology=topology)

    assert sorted(r.devices.nodes("train")) == [1000, 1001, 1002, 1003]
    np.testing.assert_allclose(r.edge(CLOUD_DIRECT), W0 + 2 / 3, rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.cloud, W0 + 2, rtol=0, atol=1e-6)
    [report] = r.reports
    assert report.participants == 4
    # Devices attached to the cloud upload straight to it: only edge 1 uses the edge-cloud link.
    assert report.link_bytes.get("edge_to_cloud", 0) == r.strategy.edge_arrays[1].count_bytes()


# --- edge strategies ------------------------------------------------------------------------


def test_an_edge_strategy_factory_is_called_once_per_edge() -> None:
    calls: list[int] = []

    def factory(group: int) -> Strategy:
        calls.append(group)
        return edge_fedavg()

    r = run(edge=factory)

    assert calls == [0, 1, CLOUD_DIRECT]
    assert len({id(s) for s in r.strategy.edges.values()}) == 3
    np.testing.assert_allclose(r.cloud, W0 + 2, rtol=0, atol=1e-6)


def test_an_edge_strategy_instance_is_copied_per_edge() -> None:
    edge = edge_fedavg()

    strategy = Hierarchical(edge=edge, topology=Topology(num_devices=4, num_edges=2))

    assert set(strategy.edges) == {0, 1, CLOUD_DIRECT}
    assert all(s is not edge and isinstance(s, FedAvg) for s in strategy.edges.values())
    assert len({id(s) for s in strategy.edges.values()}) == 3


def test_an_edge_below_its_strategys_minimum_sits_out(caplog: pytest.LogCaptureFixture) -> None:
    # FedAvg's default min_available_nodes is 2: an edge with one online device sits out.
    topology = Topology(num_devices=3, num_edges=2)  # edge 0: devices 0, 1; edge 1: device 2
    edge = FedAvg(min_train_nodes=1, fraction_evaluate=0.0)

    with caplog.at_level(logging.INFO, logger="flwr"):
        r = run(topology=topology, edge=edge, num_nodes=3)

    assert sorted(r.devices.nodes("train")) == [1000, 1001]
    np.testing.assert_allclose(r.cloud, W0 + 2 / 3, rtol=0, atol=1e-6)
    assert r.reports[0].edges[1] == {"edge": 1, "examples": 0.0}
    assert sit_out_lines(caplog) == [
        "Edge 1 sits out round 1: 1 online devices, fewer than its strategy's minimum for "
        "train (2)"]


def test_hierfedavg_is_hierarchical_over_fedavg() -> None:
    devices = FakeDevices()
    strategy = HierFedAvg(topology=Topology(num_devices=4, num_edges=2), edge_rounds=2,
                          evaluate_devices=False, node_wait=0.01)

    result = strategy.start(LocalGrid(devices, 4), initial(), num_rounds=1)

    assert all(type(s) is FedAvg for s in strategy.edges.values())
    np.testing.assert_allclose(w(result.arrays), W0 + 4, rtol=0, atol=1e-6)
    assert devices.nodes("evaluate") == []


def test_edge_rounds_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="edge_rounds must be >= 1"):
        Hierarchical(edge=edge_fedavg(), topology=Topology(num_devices=4, num_edges=2),
                     edge_rounds=0)


# --- evaluation -----------------------------------------------------------------------------


def test_server_side_evaluation_of_cloud_and_edges() -> None:
    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        return MetricRecord({"accuracy": float(w(arrays).sum()), "round": server_round})

    devices = FakeDevices()
    reports: list[RoundReport] = []
    strategy = Hierarchical(edge=edge_fedavg(), topology=Topology(num_devices=4, num_edges=2),
                            evaluate_edges=True, on_round=reports.append, node_wait=0.01)
    result = strategy.start(LocalGrid(devices, 4), initial(), num_rounds=1,
                            evaluate_fn=evaluate_fn)

    base = float(W0.sum())
    [report] = reports
    assert report.cloud_metrics == pytest.approx({"accuracy": base + 4, "round": 1})
    assert report.edges[0]["accuracy"] == pytest.approx(base + 4 / 3, abs=1e-5)
    assert report.edges[1]["accuracy"] == pytest.approx(base + 36 / 7, abs=1e-5)
    assert dict(result.evaluate_metrics_serverapp[1])["accuracy"] == pytest.approx(base + 4)
    # Round 0 is the initial model, as in Flower's Strategy.start.
    assert dict(result.evaluate_metrics_serverapp[0]) == pytest.approx(
        {"accuracy": base, "round": 0})


def test_evaluate_every_skips_rounds_but_not_the_last() -> None:
    seen: list[int] = []

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        seen.append(server_round)
        return MetricRecord({"accuracy": 0.5})

    strategy = Hierarchical(edge=edge_fedavg(), topology=Topology(num_devices=4, num_edges=2),
                            evaluate_every=2, evaluate_edges=False, node_wait=0.01)
    result = strategy.start(LocalGrid(FakeDevices(), 4), initial(), num_rounds=3,
                            evaluate_fn=evaluate_fn)

    assert seen == [0, 2, 3]
    assert sorted(result.evaluate_metrics_serverapp) == [0, 2, 3]


def test_device_evaluation_is_the_example_weighted_mean() -> None:
    # Device d reports accuracy d/10 on d + 1 examples: (0 + 0.2 + 0.6 + 1.2)/10 = 0.2.
    r = run(edge=edge_fedavg(fraction_evaluate=1.0))

    assert sorted(r.devices.nodes("evaluate")) == [1000, 1001, 1002, 1003]
    [report] = r.reports
    assert report.device_metrics == pytest.approx({"accuracy": 0.2, "num-examples": 10})
    assert dict(r.result.evaluate_metrics_clientapp[1])["accuracy"] == pytest.approx(0.2)


# --- Flower's Strategy contract ---------------------------------------------------------------


def sit_out_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [rec.getMessage() for rec in caplog.records if "sits out" in rec.getMessage()]


def test_train_metrics_of_two_edges_are_weighted_by_their_examples() -> None:
    # Edge 0 holds device 0 (1 example, loss 0), edge 1 device 1 (3 examples, loss 2): the merged
    # loss is (1*0 + 3*2)/4 = 1.5 (equal weights would give 1.0); the cloud (1*w + 3*(w + 1))/4.
    devices = FakeDevices(examples=lambda pid: 2 * pid + 1, loss=lambda pid: 2.0 * pid)

    r = run(devices, topology=Topology(num_devices=2, num_edges=2), num_nodes=2)

    assert dict(r.result.train_metrics_clientapp[1]) == pytest.approx(
        {"loss": 1.5, "num-examples": 4})
    np.testing.assert_allclose(r.cloud, W0 + 0.75, rtol=0, atol=1e-6)


def test_flowers_own_loop_drives_hierarchical_as_its_own_start_does() -> None:
    # Strategy.start is Flower's loop: configure_train, aggregate_train, configure_evaluate,
    # aggregate_evaluate, evaluate_fn. One such round is one edge round plus the cloud step.
    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        return MetricRecord({"sum": float(w(arrays).sum())})

    def make() -> tuple[Hierarchical, FakeDevices]:
        strategy = Hierarchical(edge=edge_fedavg(fraction_evaluate=1.0),
                                topology=Topology(num_devices=4, num_edges=2), node_wait=0.01)
        return strategy, FakeDevices(loss=lambda pid: float(pid))

    ours, our_devices = make()
    flowers, flower_devices = make()
    mine = ours.start(LocalGrid(our_devices, 4), initial(), num_rounds=2, timeout=5.0,
                      evaluate_fn=evaluate_fn)
    theirs = Strategy.start(flowers, LocalGrid(flower_devices, 4), initial(), num_rounds=2,
                            timeout=5.0, evaluate_fn=evaluate_fn)

    np.testing.assert_allclose(w(theirs.arrays), W0 + 4, rtol=0, atol=1e-6)
    np.testing.assert_allclose(w(theirs.arrays), w(mine.arrays), rtol=0, atol=1e-6)
    # loss d over d + 1 examples: edge 0 2/3 over 3, edge 1 18/7 over 7, merged 20/10 = 2.
    for result in (mine, theirs):
        assert sorted(result.train_metrics_clientapp) == [1, 2]
        assert dict(result.train_metrics_clientapp[2]) == pytest.approx(
            {"loss": 2.0, "num-examples": 10})
        assert dict(result.evaluate_metrics_clientapp[2]) == pytest.approx(
            {"accuracy": 0.2, "num-examples": 10})
        assert sorted(result.evaluate_metrics_serverapp) == [0, 1, 2]
    assert flower_devices.train_rounds() == our_devices.train_rounds() == [1] * 4 + [2] * 4
    assert flower_devices.rounds("evaluate") == [1] * 4 + [2] * 4


def test_aggregate_train_groups_hand_made_replies_by_edge() -> None:
    strategy = Hierarchical(edge=edge_fedavg(), topology=Topology(num_devices=4, num_edges=2),
                            node_wait=0.01)
    strategy.place(LocalGrid(FakeDevices(), 4))
    sent = {d: Message(RecordDict(), dst_node_id=1000 + d, message_type="train")
            for d in range(4)}
    stranger = Message(RecordDict(), dst_node_id=77, message_type="train")
    replies = [train_reply(sent[d], W0 + d, d + 1) for d in (3, 0, 2, 1)]
    replies.append(train_reply(stranger, W0 + 100, 1000))  # not a placed node: left out

    arrays, metrics = strategy.aggregate_train(1, replies)

    assert arrays is not None
    np.testing.assert_allclose(w(arrays), W0 + 2, rtol=0, atol=1e-6)
    np.testing.assert_allclose(w(strategy.edge_arrays[0]), W0 + 2 / 3, rtol=0, atol=1e-6)
    np.testing.assert_allclose(w(strategy.edge_arrays[1]), W0 + 18 / 7, rtol=0, atol=1e-6)
    assert dict(metrics or {}) == {"num-examples": 10}


def test_aggregate_train_without_usable_replies_returns_nothing() -> None:
    strategy = Hierarchical(edge=edge_fedavg(), topology=Topology(num_devices=4, num_edges=2),
                            node_wait=0.01)
    strategy.place(LocalGrid(FakeDevices(), 4))
    message = Message(RecordDict(), dst_node_id=1000, message_type="train")

    assert strategy.aggregate_train(1, [nan_reply(message, 0)]) == (None, None)


def test_evaluate_edge_fn_sees_the_edges_and_evaluate_fn_only_the_cloud() -> None:
    cloud_calls: list[tuple[int, float]] = []
    edge_calls: list[tuple[int, int, float]] = []

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        cloud_calls.append((server_round, float(w(arrays).sum())))
        return MetricRecord({"accuracy": 0.5})

    def evaluate_edge_fn(server_round: int, edge: int, arrays: ArrayRecord) -> MetricRecord:
        edge_calls.append((server_round, edge, float(w(arrays).sum())))
        return MetricRecord({"accuracy": edge / 4})

    reports: list[RoundReport] = []
    strategy = Hierarchical(edge=edge_fedavg(), topology=Topology(num_devices=4, num_edges=2),
                            on_round=reports.append, node_wait=0.01,
                            evaluate_edge_fn=evaluate_edge_fn)
    result = strategy.start(LocalGrid(FakeDevices(), 4), initial(), num_rounds=1,
                            evaluate_fn=evaluate_fn)

    base = float(W0.sum())
    assert [r for r, _ in cloud_calls] == [0, 1]
    assert [s for _, s in cloud_calls] == pytest.approx([base, base + 4])
    assert [(r, e) for r, e, _ in edge_calls] == [(1, 0), (1, 1)]
    assert [s for _, _, s in edge_calls] == pytest.approx([base + 4 / 3, base + 36 / 7])
    assert [entry["accuracy"] for entry in reports[0].edges] == [0.0, 0.25]
    assert sorted(result.evaluate_metrics_serverapp) == [0, 1]
    assert [report.round for report in reports] == [1]  # round 0 makes no report


def test_evaluate_fn_alone_sees_only_the_cloud_by_default() -> None:
    seen: list[int] = []

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> None:
        seen.append(server_round)

    strategy = Hierarchical(edge=edge_fedavg(), topology=Topology(num_devices=4, num_edges=2),
                            node_wait=0.01)
    result = strategy.start(LocalGrid(FakeDevices(), 4), initial(), num_rounds=2,
                            evaluate_fn=evaluate_fn)

    assert seen == [0, 1, 2]
    assert result.evaluate_metrics_serverapp == {}


def test_devices_see_the_edge_round_in_train_and_evaluate() -> None:
    devices = FakeDevices()

    run(devices, rounds=2, edge_rounds=2, edge=edge_fedavg(fraction_evaluate=1.0))

    assert devices.train_rounds() == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    # Evaluation after cloud round r follows its last edge round, r * edge_rounds.
    assert devices.rounds("evaluate") == [2] * 4 + [4] * 4


def test_hierfedavg_gives_fedavgs_options_to_every_edge() -> None:
    calls: list[int] = []

    def train_metrics(records: list[RecordDict], key: str) -> MetricRecord:
        calls.append(len(records))
        return MetricRecord({"replies": len(records)})

    devices = FakeDevices()
    strategy = HierFedAvg(topology=Topology(num_devices=4, num_edges=2), fraction_train=0.5,
                          min_available_nodes=2, fraction_evaluate=0.5,
                          train_metrics_aggr_fn=train_metrics, node_wait=0.01)

    result = strategy.start(LocalGrid(devices, 4), initial(), num_rounds=1)

    for edge in strategy.edges.values():
        assert type(edge) is FedAvg
        assert (edge.fraction_train, edge.fraction_evaluate) == (0.5, 0.5)
        assert (edge.min_train_nodes, edge.min_evaluate_nodes, edge.min_available_nodes) == (
            1, 1, 2)
        assert edge.train_metrics_aggr_fn is train_metrics
    # Half of each edge's two devices: one per edge trains, and one per edge evaluates.
    trained = devices.nodes("train")
    assert len(trained) == 2
    assert {(node - 1000) // 2 for node in trained} == {0, 1}
    assert len(devices.nodes("evaluate")) == 2
    assert calls == [1, 1]
    assert dict(result.train_metrics_clientapp[1])["replies"] == 1


def test_hierfedavg_minimums_apply_per_edge(caplog: pytest.LogCaptureFixture) -> None:
    devices = FakeDevices()
    strategy = HierFedAvg(topology=Topology(num_devices=4, num_edges=2), min_train_nodes=3,
                          evaluate_devices=False, node_wait=0.01)

    with caplog.at_level(logging.INFO, logger="flwr"):
        result = strategy.start(LocalGrid(devices, 4), initial(), num_rounds=1)

    assert devices.nodes("train") == []
    np.testing.assert_array_equal(w(result.arrays), W0)
    assert sit_out_lines(caplog) == [
        f"Edge {e} sits out round 1: 2 online devices, fewer than its strategy's minimum for "
        "train (3)" for e in (0, 1)]


def test_the_banner_names_each_edges_strategy(caplog: pytest.LogCaptureFixture) -> None:
    def factory(group: int) -> Strategy:
        if group == 1:
            return FedProx(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0)
        return edge_fedavg()

    topology = Topology(num_devices=4, num_edges=2, orphans="cloud")
    strategy = Hierarchical(edge=factory, topology=topology)
    with caplog.at_level(logging.INFO, logger="flwr"):
        strategy.summary()

    lines = [rec.getMessage() for rec in caplog.records if "──>" in rec.getMessage()]
    assert lines == ["\t├──> Hierarchical: 2 edges, 4 devices, 1 edge rounds per cloud round",
                     "\t├──> edge 0: FedAvg",
                     "\t├──> edge 1: FedProx",
                     "\t└──> cloud-attached devices: FedAvg"]


def test_an_edge_that_sits_out_is_logged_once_per_round_with_its_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    topology = Topology(num_devices=4, num_edges=2, edge_outages=((0, 1, 1),))

    with caplog.at_level(logging.INFO, logger="flwr"):
        run(topology=topology, rounds=2, edge_rounds=2, edge=edge_fedavg(fraction_evaluate=1.0))

    # Two edge rounds and an evaluation in round 1, one line; round 2 the edge is back.
    assert sit_out_lines(caplog) == [
        "Edge 0 sits out round 1: the edge is offline (its devices sit it out too)"]
    assert all(rec.levelno == logging.INFO for rec in caplog.records
               if "sits out" in rec.getMessage())


def test_an_edge_whose_devices_all_fail_is_logged_as_sitting_out(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="flwr"):
        run(FakeDevices(broken={0: raises, 1: nan_reply}))

    assert sit_out_lines(caplog) == [
        "Edge 0 sits out round 1: none of its devices sent a usable reply"]
