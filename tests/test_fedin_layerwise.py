"""FedIN's layer-wise aggregation on hand-made state dicts, and the depth family it relies on."""

from __future__ import annotations

import numpy as np
import pytest

from flower_eec.errors import ConfigError
from flower_eec.models.fedin import (
    FEDIN_DEPTHS,
    assign_depths,
    build_fedin_model,
    deepest,
    feature_shapes,
)
from flower_eec.strategies.layerwise import key_weights, layerwise_average


def a(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


BASE = {"e": a(0, 0), "in.0": a(0), "in.1": a(9), "c": a(0), "n": np.array(0, dtype=np.int64)}


def test_each_tensor_is_averaged_over_the_models_that_have_it() -> None:
    shallow = {"e": a(1, 2), "in.0": a(3), "c": a(1), "n": np.array(1, dtype=np.int64)}
    deep = {"e": a(4, 8), "in.0": a(6), "in.1": a(5), "c": a(4), "n": np.array(4, dtype=np.int64)}

    out = layerwise_average([shallow, deep], [2.0, 1.0], BASE)

    # Shared tensors: (2 * shallow + 1 * deep) / 3; in.1 only from the deep model.
    np.testing.assert_allclose(out["e"], [2, 4])
    np.testing.assert_allclose(out["in.0"], [4])
    np.testing.assert_allclose(out["in.1"], [5])
    np.testing.assert_allclose(out["c"], [2])
    assert out["n"] == 2 and out["n"].dtype == np.int64
    assert all(out[k].dtype == BASE[k].dtype for k in BASE)


def test_a_tensor_nobody_holds_keeps_the_global_value() -> None:
    out = layerwise_average([{"e": a(2, 2)}], [3.0], BASE)

    np.testing.assert_allclose(out["e"], [2, 2])
    np.testing.assert_allclose(out["in.1"], [9])
    out["in.1"][0] = 1  # a copy, not the caller's array
    assert BASE["in.1"][0] == 9


def test_per_tensor_weights_make_two_levels_equal_one() -> None:
    devices = [{"e": a(1, 1), "in.1": a(1)}, {"e": a(3, 3)}, {"e": a(5, 5), "in.1": a(2)}]
    examples = [1.0, 2.0, 3.0]
    flat = layerwise_average(devices, examples, BASE)

    edge_a = layerwise_average(devices[:2], examples[:2], BASE)
    edge_b = layerwise_average(devices[2:], examples[2:], BASE)
    weights = [key_weights(devices[:2], examples[:2]), key_weights(devices[2:], examples[2:])]
    held = [{k: edge_a[k] for k in weights[0]}, {k: edge_b[k] for k in weights[1]}]
    cloud = layerwise_average(held, weights, BASE)

    for key in BASE:
        np.testing.assert_allclose(cloud[key], flat[key], rtol=1e-6)
    np.testing.assert_allclose(flat["in.1"], [(1 * 1 + 3 * 2) / 4])


@pytest.mark.parametrize("state, message", [
    ({"x": a(1)}, "not in the global model"),
    ({"e": a(1)}, "shape"),
])
def test_a_foreign_tensor_is_refused(state: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        layerwise_average([state], [1.0], BASE)


def test_depths_nest_and_share_extractor_and_classifier() -> None:
    names = [set(build_fedin_model(d, 10, 3, stem="cifar", width=0.125).state_dict())
             for d in FEDIN_DEPTHS]
    for shallow, deep in zip(names, names[1:], strict=False):
        assert shallow < deep
    shared = set.intersection(*names)
    assert {k for k in names[-1] if k.startswith(("extractor", "classifier"))} <= shared
    assert deepest(list(FEDIN_DEPTHS)) == "resnet26" and deepest(["resnet14", "resnet10"]) == (
        "resnet14")
    model = build_fedin_model("resnet18", 10, 3, stem="cifar", width=0.25)
    assert feature_shapes(model, 3, 32) == ((16, 32, 32), (128, 4, 4))


def test_depths_are_split_evenly_and_reproducibly() -> None:
    depths = assign_depths(11, FEDIN_DEPTHS, seed=3)
    counts = sorted(depths.count(d) for d in FEDIN_DEPTHS)
    assert counts == [2, 2, 2, 2, 3]
    assert depths == assign_depths(11, FEDIN_DEPTHS, seed=3) != assign_depths(11, FEDIN_DEPTHS, 4)
    with pytest.raises(ConfigError, match="resnet99"):
        assign_depths(2, ["resnet99"], seed=0)
