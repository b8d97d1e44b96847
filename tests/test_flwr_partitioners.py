"""Flower Datasets partitioners as a partition scheme (``data.partition=flwr_datasets:<Name>``).

flwr-datasets is in the ``test`` extra; it runs here offline on in-memory labels.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner

from flower_eec.data import dirichlet, partition
from flower_eec.errors import ConfigError
from flower_eec.run.config import from_json, from_run_config, parse_overrides, resolve, to_json
from flower_eec.run.federated import federated_data

DIRICHLET = "flwr_datasets:DirichletPartitioner"
CLASSES, PER_CLASS, DEVICES = 10, 100, 10
SEEDS = range(20)


def labels() -> np.ndarray:
    """1000 shuffled labels, 100 of each of 10 classes."""
    return np.random.default_rng(123).permutation(np.repeat(np.arange(CLASSES), PER_CLASS))


def flwr_dirichlet(y: np.ndarray, alpha: float, seed: int,
                   self_balancing: bool = True) -> list[np.ndarray]:
    with warnings.catch_warnings():  # a redraw for min_partition_size warns; ours redraws quietly
        warnings.simplefilter("ignore")
        return partition(y, DEVICES, DIRICHLET, seed=seed, alpha=alpha, min_size=10,
                         partitioner_args={"self_balancing": self_balancing})


def heterogeneity(y: np.ndarray, shards: list[np.ndarray]) -> tuple[float, float, float]:
    """(coefficient of variation of shard sizes, spread over shards of each class's proportion
    averaged over classes, mean share of a shard's largest class)."""
    sizes = np.array([len(s) for s in shards])
    proportions = np.array([np.bincount(y[s], minlength=CLASSES) / len(s) for s in shards])
    return (float(sizes.std() / sizes.mean()), float(proportions.std(axis=0).mean()),
            float(proportions.max(axis=1).mean()))


def z_scores(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Per statistic: difference of the means over seeds in standard errors of that difference."""
    error = np.sqrt(ours.var(axis=0, ddof=1) / len(ours) + theirs.var(axis=0, ddof=1) / len(theirs))
    return np.abs(ours.mean(axis=0) - theirs.mean(axis=0)) / error


def measure(alpha: float, self_balancing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    y = labels()
    ours, theirs = [], []
    for seed in SEEDS:
        mine = dirichlet(y, DEVICES, alpha, seed, min_size=10)
        flwr = flwr_dirichlet(y, alpha, seed, self_balancing)
        for shards in (mine, flwr):  # both promise: one shard per device, every example once
            assert len(shards) == DEVICES
            assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(len(y)))
            assert min(len(s) for s in shards) >= 10
        ours.append(heterogeneity(y, mine))
        theirs.append(heterogeneity(y, flwr))
    return np.array(ours), np.array(theirs)


# Measured over seeds 0-19 on these labels (ours, flwr-datasets 0.6.1 with self_balancing):
#   alpha 0.5: size CV 0.269 / 0.253, class-share spread 0.122 / 0.123, top class 0.386 / 0.389
#   alpha 1.0: size CV 0.186 / 0.176, class-share spread 0.093 / 0.091, top class 0.303 / 0.297
# (largest gap 1.0 standard error). Both are the same algorithm (Yurochkin et al. 2019, with the
# cap on devices past the mean size), so the means must agree within 3 standard errors; the
# spread bands pin each alpha's level (0.5 and 1.0 do not overlap).
@pytest.mark.parametrize(("alpha", "spread"), [(0.5, (0.11, 0.135)), (1.0, (0.08, 0.10))])
def test_flwr_dirichlet_matches_ours_in_distribution(alpha: float,
                                                     spread: tuple[float, float]) -> None:
    ours, theirs = measure(alpha)

    assert np.all(z_scores(ours, theirs) < 3), (ours.mean(axis=0), theirs.mean(axis=0))
    for sample in (ours, theirs):
        assert spread[0] < sample[:, 1].mean() < spread[1]


def test_the_comparison_tells_an_unbalanced_split_apart() -> None:
    # Without the size cap flwr's shards differ (measured at alpha 1.0: size CV 0.269 vs 0.186,
    # 4.4 standard errors; class-share spread 0.081 vs 0.093, 6.0): the test above can fail.
    ours, theirs = measure(1.0, self_balancing=False)

    assert np.all(z_scores(ours, theirs)[:2] > 3)


def test_the_config_selects_the_partitioner_and_fills_in_the_run() -> None:
    config = resolve("hierfavg", parse_overrides([
        f"data.partition={DIRICHLET}", "data.alpha=0.3", "seed=5",
        "data.partitioner_args={self_balancing: true}"]))

    shards = federated_data(config).train_indices

    # The same split, made by hand with Flower Datasets' own API: alpha, seed, min size and the
    # device count come from the run (the smoke profile holds nothing out: indices are positions).
    y = federated_data(config).dataset.y_train
    by_hand = DirichletPartitioner(num_partitions=4, partition_by="label", alpha=0.3,
                                   min_partition_size=10, self_balancing=True, seed=5)
    by_hand.dataset = Dataset.from_dict({"label": y.tolist(), "row": list(range(len(y)))})
    expected = [sorted(by_hand.load_partition(i)["row"]) for i in range(4)]
    assert [s.tolist() for s in shards] == expected
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(len(y)))


def test_flwr_run_config_sets_the_arguments_as_dotted_overrides() -> None:
    config = from_run_config({"overrides": f"data.partition={DIRICHLET} "
                              "data.partitioner_args.alpha=0.25 "
                              "data.partitioner_args.self_balancing=true"})

    assert (config.data.partition, config.data.partitioner_args) == (
        DIRICHLET, {"alpha": 0.25, "self_balancing": True})
    assert from_json(to_json(config)) == config  # travels to the engine's processes intact


def test_partitioner_args_reach_the_class() -> None:
    y = labels()

    with pytest.warns(UserWarning, match=r"Classes: \[6, 7, 8, 9\] will NOT be used"):
        shards = partition(y, 5, "flwr_datasets:PathologicalPartitioner", seed=0,
                           classes_per_device=2,
                           partitioner_args={"class_assignment_mode": "deterministic"})

    # Deterministic mode gives device i the classes i and i+1 (classes_per_device fills in
    # num_classes_per_partition); a class is split evenly among its holders, so devices 0 and 4
    # hold all of class 0 and class 5, and classes 6-9 go nowhere (flwr-datasets warns).
    assert [sorted(set(y[s].tolist())) for s in shards] == [[0, 1], [1, 2], [2, 3], [3, 4],
                                                           [4, 5]]
    assert [len(s) for s in shards] == [150, 100, 100, 100, 150]


def test_a_partitioner_that_makes_another_number_of_shards_is_refused() -> None:
    with pytest.raises(ConfigError, match="made 2 partitions for 4 devices"):
        partition(labels(), 4, "flwr_datasets:SizePartitioner", seed=0,
                  partitioner_args={"partition_sizes": [400, 600]})


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.partition=flwr_datasets:Nope"], r"no partitioner 'Nope'.*flwr_datasets:Dirichlet"),
    ([f"data.partition={DIRICHLET}", "data.partitioner_args={bogus: 1}"], "'bogus'"),
    ([f"data.partition={DIRICHLET}", "data.partitioner_args={num_partitions: 3}"],
     "topology.num_devices"),
    (["data.partition=iid", "data.partitioner_args={alpha: 1}"], "data.partitioner_args"),
])
def test_bad_partitioner_settings_stop_the_run_while_the_config_is_read(
        overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve("hierfavg", parse_overrides(overrides))


def test_without_the_package_the_error_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flwr_datasets", None)  # import flwr_datasets fails
    monkeypatch.setitem(sys.modules, "flwr_datasets.partitioner", None)

    with pytest.raises(ConfigError, match=r'pip install -e "\.\[flwr-datasets\]"'):
        resolve("hierfavg", parse_overrides([f"data.partition={DIRICHLET}"]))


def test_our_own_schemes_import_nothing_of_flwr_datasets() -> None:
    code = ("import sys, numpy as np\n"
            "from flower_eec.run.config import resolve\n"
            "from flower_eec.data import partition\n"
            "resolve('hierfavg', {'data': {'partition': 'dirichlet'}})\n"
            "partition(np.arange(100) % 10, 4, 'dirichlet', seed=0)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('flwr_datasets', 'datasets', 'pyarrow')))\n")

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)

    assert done.stdout.strip() == "[]"


def test_partitioner_args_belong_to_a_flwr_datasets_scheme_only() -> None:
    with pytest.raises(ConfigError, match="only to a flwr_datasets:<Partitioner> scheme"):
        partition(labels(), 4, "iid", seed=0, partitioner_args={"alpha": 1.0})
    with pytest.raises(ConfigError, match=r"or flwr_datasets:<Partitioner>"):
        partition(labels(), 4, "random", seed=0)
