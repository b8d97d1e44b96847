"""Tests of the end-edge-cloud tree: assignment, device models, mobility, connectivity, errors."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import flower_eec.topology
from flower_eec.errors import ConfigError
from flower_eec.topology import (
    RoundTopology,
    Topology,
    assign_devices,
    default_num_edges,
    device_models,
)


def test_topology_is_pure_numpy() -> None:
    # ast.walk also sees imports inside functions, so a lazy import would fail here too.
    source = Path(flower_eec.topology.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"torch", "torchvision", "flwr"}
    assert "numpy" in imported


@pytest.mark.parametrize(
    ("k", "e"), [(1, 1), (3, 1), (8, 2), (9, 3), (15, 3), (16, 4), (225, 15)]
)
def test_default_num_edges_is_floor_sqrt(k: int, e: int) -> None:
    assert default_num_edges(k) == e


def test_contiguous_blocks() -> None:
    edges = assign_devices(10, 3, "contiguous")
    assert edges.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_round_robin() -> None:
    edges = assign_devices(10, 3, "round_robin")
    assert edges.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]


def test_random_is_balanced_and_seeded() -> None:
    a = assign_devices(10, 3, "random", seed=4)
    assert sorted(a.tolist()) == assign_devices(10, 3, "contiguous").tolist()
    assert np.array_equal(a, assign_devices(10, 3, "random", seed=4))
    draws = {tuple(assign_devices(10, 3, "random", seed=s).tolist()) for s in range(10)}
    assert len(draws) > 1


@pytest.mark.parametrize("scheme", ["contiguous", "round_robin", "random"])
@pytest.mark.parametrize(("k", "e"), [(7, 7), (11, 4), (225, 15), (5, 1)])
def test_edge_sizes_as_even_as_possible(scheme: str, k: int, e: int) -> None:
    sizes = np.bincount(assign_devices(k, e, scheme, seed=1), minlength=e)
    assert sizes.sum() == k
    assert sizes.max() - sizes.min() <= 1


@pytest.mark.parametrize(
    ("k", "fraction", "expected"), [(10, 0.3, 3), (225, 0.2, 45), (7, 0.5, 4)]
)
def test_device_models_fraction(k: int, fraction: float, expected: int) -> None:
    names = device_models(
        k, "cnn3", large_model="resnet10", large_fraction=fraction, seed=2
    )
    assert len(names) == k
    assert names.count("resnet10") == expected == round(fraction * k)
    assert set(names) == {"cnn3", "resnet10"}
    again = device_models(
        k, "cnn3", large_model="resnet10", large_fraction=fraction, seed=2
    )
    assert names == again


def test_device_models_single_model() -> None:
    assert device_models(4, "cnn3") == ["cnn3"] * 4


def test_device_models_fraction_without_large_model() -> None:
    with pytest.raises(ConfigError, match="large_model"):
        device_models(10, "cnn3", large_fraction=0.5)


DYNAMIC: dict[str, Any] = {
    "num_devices": 30,
    "num_edges": 5,
    "assignment": "random",
    "seed": 7,
    "mobility_rate": 0.3,
    "device_dropout": 0.2,
    "edge_dropout": 0.2,
    "orphans": "cloud",
}


def test_same_arguments_same_tree_in_any_call_order() -> None:
    forward, backward = Topology(**DYNAMIC), Topology(**DYNAMIC)
    rounds = range(8)
    first = [forward.at_round(r) for r in rounds]
    second = [backward.at_round(r) for r in reversed(rounds)][::-1]
    assert first == second
    assert [forward.moves(r) for r in rounds] == [
        Topology(**DYNAMIC).moves(r) for r in rounds
    ]


def test_different_seed_different_tree() -> None:
    a = Topology(**DYNAMIC).at_round(5)
    b = Topology(**{**DYNAMIC, "seed": 8}).at_round(5)
    assert a != b


def test_round_zero_is_the_initial_assignment_all_online() -> None:
    topo = Topology(**DYNAMIC)
    view = topo.at_round(0)
    assert np.array_equal(view.edge_of, assign_devices(30, 5, "random", seed=7))
    assert view.device_online.all() and view.edge_online.all()
    assert topo.moves(0) == []


def test_round_views_are_read_only() -> None:
    view = Topology(**DYNAMIC).at_round(2)
    with pytest.raises(ValueError):
        view.edge_of[0] = 1


def test_no_mobility_never_moves() -> None:
    topo = Topology(num_devices=20, num_edges=4, device_dropout=0.5, seed=1)
    start = topo.at_round(0).edge_of
    for r in range(1, 20):
        assert np.array_equal(topo.at_round(r).edge_of, start)
        assert topo.moves(r) == []


def test_full_mobility_moves_everyone_to_another_edge() -> None:
    topo = Topology(num_devices=20, num_edges=4, mobility_rate=1.0, seed=3)
    for r in range(1, 15):
        before, after = topo.at_round(r - 1).edge_of, topo.at_round(r).edge_of
        assert (before != after).all()
        moves = topo.moves(r)
        assert [d for d, _, _ in moves] == list(range(20))
        assert all(old == before[d] and new == after[d] for d, old, new in moves)


def test_move_rate_and_destinations_are_uniform() -> None:
    rate, k, e, rounds = 0.2, 100, 5, 200
    topo = Topology(num_devices=k, num_edges=e, mobility_rate=rate, seed=11)
    moves = [m for r in range(1, rounds + 1) for m in topo.moves(r)]
    observed = len(moves) / (k * rounds)
    sd = np.sqrt(rate * (1 - rate) / (k * rounds))
    assert abs(observed - rate) < 5 * sd
    # Destination relative to origin: offsets 1..E-1 equally likely.
    offsets = np.bincount([(new - old) % e for _, old, new in moves], minlength=e)
    assert offsets[0] == 0
    expected = len(moves) / (e - 1)
    assert np.all(np.abs(offsets[1:] - expected) < 5 * np.sqrt(expected))


def test_dropout_rates() -> None:
    k, e, rounds = 100, 10, 200
    topo = Topology(
        num_devices=k, num_edges=e, device_dropout=0.3, edge_dropout=0.1, seed=5
    )
    views = [topo.at_round(r) for r in range(1, rounds + 1)]
    device_off = 1 - np.mean([v.device_online.mean() for v in views])
    edge_off = 1 - np.mean([v.edge_online.mean() for v in views])
    assert abs(device_off - 0.3) < 5 * np.sqrt(0.3 * 0.7 / (k * rounds))
    assert abs(edge_off - 0.1) < 5 * np.sqrt(0.1 * 0.9 / (e * rounds))


def test_zero_and_full_dropout() -> None:
    never = Topology(num_devices=10, num_edges=3, seed=2)
    always = Topology(
        num_devices=10, num_edges=3, device_dropout=1.0, edge_dropout=1.0, seed=2
    )
    for r in range(1, 10):
        assert never.at_round(r).participants() == list(range(10))
        assert not always.at_round(r).device_online.any()
        assert not always.at_round(r).edge_online.any()


def test_edge_outage_is_exactly_its_stretch() -> None:
    topo = Topology(num_devices=9, num_edges=3, edge_outages=((1, 3, 5),))
    offline = [r for r in range(10) if not topo.at_round(r).edge_online[1]]
    assert offline == [3, 4, 5]
    assert all(topo.at_round(r).edge_online[[0, 2]].all() for r in range(10))


def test_outages_accept_lists() -> None:
    topo = Topology(num_devices=4, num_edges=2, edge_outages=[[0, 1, 2]])  # type: ignore[arg-type]
    assert topo.edge_outages == ((0, 1, 2),)
    assert hash(topo) == hash(
        Topology(num_devices=4, num_edges=2, edge_outages=((0, 1, 2),))
    )


def _hand_made(orphans: str) -> RoundTopology:
    # devices 0-5; edges 0,1,2; edge 1 offline; device 2 (edge 0) and device 4 (edge 1) offline.
    return RoundTopology(
        round=1,
        edge_of=np.array([0, 0, 0, 1, 1, 2]),
        device_online=np.array([True, True, False, True, False, True]),
        edge_online=np.array([True, False, True]),
        orphans=orphans,
    )


def test_orphans_skip() -> None:
    view = _hand_made("skip")
    assert [view.devices_of(e) for e in range(3)] == [[0, 1], [], [5]]
    assert view.cloud_direct() == []
    assert view.participants() == [0, 1, 5]


def test_orphans_cloud() -> None:
    view = _hand_made("cloud")
    assert [view.devices_of(e) for e in range(3)] == [[0, 1], [], [5]]
    assert view.cloud_direct() == [3]
    assert view.participants() == [0, 1, 3, 5]


def test_devices_of_unknown_edge() -> None:
    with pytest.raises(IndexError):
        _hand_made("skip").devices_of(3)


def test_orphans_under_outage() -> None:
    for orphans, direct in (("skip", []), ("cloud", [2, 3])):
        topo = Topology(
            num_devices=4, num_edges=2, edge_outages=((1, 1, 1),), orphans=orphans
        )
        view = topo.at_round(1)
        assert view.devices_of(1) == []
        assert view.cloud_direct() == direct
        assert view.participants() == [0, 1, *direct]


@pytest.mark.parametrize(
    ("kwargs", "mentions"),
    [
        ({"num_edges": 0}, "num_edges"),
        ({"num_devices": 2, "num_edges": 3}, "num_devices"),
        ({"assignment": "nearest"}, "assignment"),
        ({"orphans": "drop"}, "orphans"),
        ({"mobility_rate": 1.5}, "mobility_rate"),
        ({"device_dropout": -0.1}, "device_dropout"),
        ({"edge_dropout": float("nan")}, "edge_dropout"),
        ({"seed": -1}, "seed"),
        ({"num_edges": 1, "mobility_rate": 0.1}, "mobility_rate"),
        ({"edge_outages": ((3, 1, 2),)}, "edge"),
        ({"edge_outages": ((0, 0, 2),)}, "first_round"),
        ({"edge_outages": ((0, 4, 2),)}, "last_round"),
        ({"edge_outages": ((0, 1),)}, "edge_outages"),
    ],
)
def test_validation(kwargs: dict[str, Any], mentions: str) -> None:
    args = {"num_devices": 6, "num_edges": 3, **kwargs}
    with pytest.raises(ConfigError, match=mentions):
        Topology(**args)


def test_choice_errors_list_allowed_values() -> None:
    with pytest.raises(ConfigError, match="round_robin"):
        assign_devices(4, 2, "nearest")
    with pytest.raises(ConfigError, match="cloud"):
        Topology(num_devices=4, num_edges=2, orphans="drop")


def test_negative_round() -> None:
    with pytest.raises(ConfigError, match="round"):
        Topology(num_devices=4, num_edges=2).at_round(-1)
