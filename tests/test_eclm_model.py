"""ECLM's modular model: shapes, sub-models, routing, and the label-shift schedule of its data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flower_eec.core.eclm_training import module_use, use_statistics
from flower_eec.core.learning import Images
from flower_eec.errors import ConfigError
from flower_eec.models import build_model, count_parameters
from flower_eec.models.modular import (
    ModularNet,
    SelectorNorm,
    block_of,
    module_key,
    module_sizes,
)
from flower_eec.run.config import resolve
from flower_eec.run.federated import FederatedData, federated_data
from flower_eec.run.shift import shifted


def small(**options: object) -> ModularNet:
    torch.manual_seed(0)
    model = build_model("modular", 10, 3, **{"layers": 2, "modules": 3, "channels": 4, **options})
    assert isinstance(model, ModularNet)
    return model


def test_modules_of_a_layer_are_interchangeable() -> None:
    model = small()
    sizes, shared = module_sizes(model)

    assert [len(set(layer)) for layer in sizes] == [1, 1]  # equal sizes within a layer
    assert shared + sum(map(sum, sizes)) == count_parameters(model)
    state = model.state_dict()
    for layer in range(2):
        shapes = [[tuple(v.shape) for k, v in state.items() if k.startswith(module_key(layer, i))]
                  for i in range(3)]
        assert shapes[0] == shapes[1] == shapes[2]


def test_block_of_names_module_tensors_only() -> None:
    assert block_of("layers.1.2.conv1.weight") == (1, 2)
    assert block_of("stem.0.weight") is None
    assert block_of("selector.bias") is None
    assert block_of("head.weight") is None


def test_a_sub_model_is_a_subset_of_the_full_model_with_equal_shapes() -> None:
    full, sub = small().state_dict(), small(kept=[[2], [0, 1]]).state_dict()

    assert set(sub) < set(full)
    assert all(full[k].shape == v.shape for k, v in sub.items())
    assert {block_of(k) for k in sub} - {None} == {(0, 2), (1, 0), (1, 1)}


def test_a_sub_model_routes_only_to_its_modules() -> None:
    model = small(kept=[[2], [0, 1]])

    _, routing = model.forward_routed(torch.randn(16, 3, 8, 8))

    assert set(routing.chosen[:, 0].flatten().tolist()) == {2}
    assert set(routing.chosen[:, 1].flatten().tolist()) <= {0, 1}
    assert float(routing.gates.detach()[:, 0, :2].abs().sum()) == 0.0
    assert torch.allclose(routing.gates.sum(dim=2), torch.ones(16, 2))


def test_a_sub_model_holding_everything_computes_what_the_full_model_does() -> None:
    full = small().eval()
    same = small(kept=[[0, 1, 2], [0, 1, 2]]).eval()
    same.load_state_dict(full.state_dict())
    x = torch.randn(4, 3, 8, 8)

    assert torch.equal(full(x), same(x))


def test_top2_runs_two_distinct_modules_with_weights_summing_to_one() -> None:
    _, routing = small(top_k=2).forward_routed(torch.randn(8, 3, 8, 8))

    assert routing.chosen.shape == (8, 2, 2)
    assert (routing.chosen[..., 0] != routing.chosen[..., 1]).all()
    assert torch.allclose(routing.weights.sum(dim=2), torch.ones(8, 2))


def test_with_top1_the_selector_still_learns_from_the_task_loss() -> None:
    model = small()
    logits = model(torch.randn(8, 3, 8, 8))

    torch.nn.functional.cross_entropy(logits, torch.arange(8)).backward()

    linear = model.selector[-1]
    assert isinstance(linear, torch.nn.Linear)
    assert linear.weight.grad is not None
    assert float(linear.weight.grad.abs().sum()) > 0


def test_the_selector_norm_standardises_each_pooled_feature_over_the_batch() -> None:
    norm = SelectorNorm(2)
    x = torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, 16.0]])

    out = norm(x)

    # Column 0: mean 3, biased variance 8/3; column 1: mean 12, variance 8.
    expected = torch.tensor([[-2.0, -2.0], [0.0, -2.0], [2.0, 4.0]])
    expected /= torch.sqrt(torch.tensor([8 / 3, 8.0]) + norm.eps)
    assert torch.allclose(out, expected, atol=1e-5)


def test_the_selector_norm_uses_running_statistics_for_a_single_sample() -> None:
    norm = SelectorNorm(2)
    assert norm.running_mean is not None and norm.running_var is not None
    norm.running_mean.fill_(1.0)
    norm.running_var.fill_(4.0)

    out = norm(torch.tensor([[3.0, 5.0]]))  # in training mode

    assert torch.allclose(out, torch.tensor([[1.0, 2.0]]), atol=1e-4)
    assert torch.equal(norm.running_mean, torch.ones(2))  # a single sample updates nothing


def test_without_selector_norm_the_selector_is_the_linear_layer_alone() -> None:
    model = small(selector_norm=False)

    assert [type(m) for m in model.selector] == [torch.nn.Linear]
    assert isinstance(small().selector[0], SelectorNorm)


def test_gate_noise_changes_training_routing_reproducibly_and_only_when_asked() -> None:
    model = small()
    x = torch.randn(16, 3, 8, 8)

    _, clean = model.forward_routed(x)
    _, again = model.forward_routed(x)
    _, noisy = model.forward_routed(x, 1.0, torch.Generator().manual_seed(3))
    _, same = model.forward_routed(x, 1.0, torch.Generator().manual_seed(3))

    assert torch.equal(clean.gates, again.gates)
    assert not torch.allclose(clean.gates, noisy.gates)
    assert torch.equal(noisy.gates, same.gates)
    assert torch.allclose(noisy.gates.sum(dim=2), torch.ones(16, 2))


def test_a_frozen_selector_keeps_its_weights_and_statistics_while_training() -> None:
    model = small()
    model.freeze_selector()
    before = {k: v.clone() for k, v in model.selector.state_dict().items()}

    model.train()
    model(torch.randn(8, 3, 8, 8) + 5)

    assert not model.selector.training and model.stem.training
    assert all(not p.requires_grad for p in model.selector.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.selector.state_dict().items())


@pytest.mark.parametrize(("options", "mentions"), [
    ({"top_k": 3}, "top_k"), ({"kept": [[0]]}, "layers"), ({"kept": [[], [0]]}, "layer 0"),
    ({"kept": [[0], [5]]}, "layer 1"), ({"channels": 0}, "channels")])
def test_bad_options_are_config_errors(options: dict, mentions: str) -> None:
    with pytest.raises(ConfigError, match=mentions):
        small(**options)


def test_module_use_is_a_histogram_per_layer() -> None:
    model = small(top_k=2)
    images = Images(torch.randint(0, 255, (20, 3, 8, 8), dtype=torch.uint8),
                    torch.zeros(20, dtype=torch.int64), (0.5,) * 3, (0.25,) * 3)

    usage = module_use(model, images, batch_size=7)

    assert usage.shape == (2, 3)
    assert np.allclose(usage.sum(axis=1), 1.0)
    stats = use_statistics(usage)
    assert 0 <= stats["min_share"] <= stats["max_share"] <= 1


def test_use_statistics_by_hand() -> None:
    stats = use_statistics(np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]]))

    assert stats["min_share"] == 0.0 and stats["max_share"] == 1.0
    assert stats["min_normalised_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert stats["modules_unused"] == 3


def test_label_shift_redeals_the_same_pool_deterministically() -> None:
    config = resolve(None, {"method": "eclm", "profile": "smoke"})
    data = federated_data(config)
    d = config.data

    def shift(epoch: int) -> FederatedData:
        return shifted(data, epoch, alpha=0.5, seed=config.seed, min_size=d.min_size,
                       local_test_size=d.local_test_size)

    first, again, second = shift(1), shift(1), shift(2)

    assert shift(0) is data
    pool = np.sort(np.concatenate(data.train_indices))
    for other in (first, second):
        assert np.array_equal(np.sort(np.concatenate(other.train_indices)), pool)
        assert min(len(t) for t in other.train_indices) >= d.min_size
        assert np.array_equal(other.public, data.public)
    assert all(np.array_equal(a, b) for a, b in zip(first.train_indices, again.train_indices,
                                                    strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(first.train_indices,
                                                        second.train_indices, strict=True))
    # A device's local test split follows its new label mix.
    y_train, y_test = data.dataset.y_train, data.dataset.y_test
    for train, test in zip(first.train_indices, first.test_indices, strict=True):
        assert set(y_test[test]) <= set(y_train[train])
