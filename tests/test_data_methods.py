"""Every registered method on every dataset read from files, as on CIFAR-10: one smoke round each
on tiny copies in the official formats (CIFAR-100 coarse and fine, SVHN, CINIC-10,
Fashion-MNIST), all under one shared ``data.root``, through the in-process grid and our ClientApp.

A spy on ``F.cross_entropy`` (every method's training and evaluation loss goes through it) shows
that every model of the run, on every tier, has one logit per class of the dataset. FedAgg and
FedEEC need a bridge for the dataset's images: the shipped one takes 3-channel images, and
1-channel Fashion-MNIST is refused until a bridge trained by ``scripts/train_bridge.py`` is given.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from datasets_helpers import write_dataset
from torch.nn import functional as F

from flower_eec.app.client_app import app
from flower_eec.data import IMAGE_SHAPES
from flower_eec.errors import ConfigError
from flower_eec.grid.local import LocalGrid
from flower_eec.models.bridge import DEFAULT_WEIGHTS, bridge_meta, load_bridge
from flower_eec.run import experiment
from flower_eec.run.config import resolve, to_json
from flower_eec.run.federated import federated_data
from flower_eec.run.registry import methods

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_bridge.py"
TRAIN, TEST = 80, 30  # images per dataset copy
# (data.dataset, data.cifar100_labels, classes the models must have)
DATASETS = [
    ("cifar100", "coarse", 20),
    ("cifar100", "fine", 100),
    ("svhn", "coarse", 10),
    ("cinic10", "coarse", 10),
    ("fashion_mnist", "coarse", 10),
]
BRIDGE_METHODS = sorted(name for name, entry in methods().items() if entry.bridge)
CASES = [
    pytest.param(method, dataset, labels, classes, id=f"{method}-{dataset}-{labels}"
                 if dataset == "cifar100" else f"{method}-{dataset}")
    for dataset, labels, classes in DATASETS
    for method in sorted(methods())
    if IMAGE_SHAPES[dataset][0] == 3 or method not in BRIDGE_METHODS
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder holding every dataset in its subfolder, as a shared data.root does."""
    root = tmp_path_factory.mktemp("data")
    for name in dict.fromkeys(dataset for dataset, _, _ in DATASETS):
        write_dataset(name, root, train=TRAIN, test=TEST)
    return root


@pytest.fixture
def logit_widths(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """The logit widths of every cross-entropy computed from now on (training and evaluation)."""
    widths: set[int] = set()
    original = F.cross_entropy

    def spy(logits: torch.Tensor, target: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        widths.add(int(logits.shape[-1]))
        return original(logits, target, *args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", spy)
    return widths


def run(method: str, out: Path, data: dict[str, Any], **sections: Any) -> tuple[Any, dict]:
    """One round of ``method`` in the smoke profile on the in-process grid."""
    config = resolve(method, {
        "profile": "smoke", "out": str(out), "train": {"rounds": 1},
        "data": {"verify": False, "local_test_size": 10, **data}, **sections,
    })
    grid = LocalGrid(app, config.topology.num_devices, {"config-json": to_json(config)})
    return config, experiment.run(grid, config)


def assert_one_clean_round(result: dict[str, Any]) -> None:
    [row] = result["rounds"]
    assert row["devices"]["failures"] == 0, row
    assert row["devices"]["participants"] == 4, row
    assert 0.0 <= row["cloud"]["accuracy"] <= 1.0 and np.isfinite(row["cloud"]["loss"]), row


@pytest.mark.parametrize(("method", "dataset", "labels", "classes"), CASES)
def test_every_method_runs_on_every_dataset(
    method: str, dataset: str, labels: str, classes: int, data_root: Path, tmp_path: Path,
    logit_widths: set[int],
) -> None:
    config, result = run(method, tmp_path, {"dataset": dataset, "root": str(data_root),
                                            "cifar100_labels": labels})
    assert_one_clean_round(result)
    data = federated_data(config).dataset
    assert (data.name, data.num_classes) == (dataset, classes)
    assert data.x_train.shape[1:] == IMAGE_SHAPES[dataset]
    assert len(data.mean) == len(data.std) == IMAGE_SHAPES[dataset][0]
    assert logit_widths == {classes}  # every tier's model, in training and in evaluation


@pytest.mark.parametrize("method", BRIDGE_METHODS)
def test_bridge_methods_refuse_one_channel_images_and_name_the_fix(method: str) -> None:
    for dataset in ("fashion_mnist", "mnist"):
        with pytest.raises(ConfigError) as err:
            resolve(method, {"data": {"dataset": dataset}})
        message = str(err.value)
        assert f"data.dataset={dataset} has 1x28x28 images" in message
        assert "not widened to 3 channels" in message
        assert f"scripts/train_bridge.py --dataset {dataset}" in message
        assert "fedagg.bridge_weights=FILE" in message


# ---------------------------------------------------------------- scripts/train_bridge.py


@pytest.fixture(scope="module")
def train_bridge() -> Iterator[ModuleType]:
    """The script as a module; torch's global settings it changes are restored afterwards."""
    spec = importlib.util.spec_from_file_location("train_bridge", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    with torch.random.fork_rng():
        yield module
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


def trained_bridge(train_bridge: ModuleType, root: Path, out: Path, *args: str) -> Path:
    """A bridge trained for two epochs (one step each) on the held-out half of a tiny copy."""
    argv = ["--data-root", str(root), "--no-verify", "--fraction", "0.5", "--epochs", "2",
            "--threads", str(torch.get_num_threads()), "--out", str(out), *args]
    assert train_bridge.main(argv) == 0
    return out


def test_train_bridge_defaults_are_the_shipped_bridges(train_bridge: ModuleType) -> None:
    args = train_bridge.parse_args([])
    assert (args.dataset, args.out, args.fraction, args.val_fraction) == (
        "cifar10", DEFAULT_WEIGHTS, 0.1, 0.1)
    assert (args.epochs, args.batch_size, args.lr, args.seed, args.verify) == (
        30, 64, 3e-3, 0, True)
    assert train_bridge.parse_args(["--dataset", "svhn"]).out == Path("bridge_svhn.json")
    fine = train_bridge.parse_args(["--dataset", "cifar100", "--cifar100-labels", "fine"])
    assert fine.out == Path("bridge_cifar100_fine.json")
    assert bridge_meta()["dataset"].startswith("cifar10 ")  # what the config check reads


@pytest.mark.parametrize("method", BRIDGE_METHODS)
def test_a_bridge_trained_by_the_script_runs_fashion_mnist(
    method: str, train_bridge: ModuleType, data_root: Path, tmp_path: Path,
    logit_widths: set[int],
) -> None:
    path = trained_bridge(train_bridge, data_root, tmp_path / "bridge.json",
                          "--dataset", "fashion_mnist")
    meta = bridge_meta(path)
    assert (meta["in_channels"], meta["image_shape"], meta["holdout_fraction"]) == (
        1, [1, 28, 28], 0.5)
    assert meta["dataset"].startswith("fashion_mnist ") and load_bridge(path).in_channels == 1
    data = {"dataset": "fashion_mnist", "root": str(data_root)}
    with pytest.raises(ConfigError, match=r"data\.holdout is 0\.0, but the bridge in "
                                          r"fedagg\.bridge_weights .* held-out 50%"):
        resolve(method, {"data": data, "fedagg": {"bridge_weights": str(path)}})
    _, result = run(method, tmp_path / "out", {**data, "holdout": 0.5},
                    fedagg={"bridge_weights": str(path)})
    assert_one_clean_round(result)
    assert logit_widths == {10}


def test_a_bridge_trained_on_cifar100_checks_channels_labels_and_holdout(
    train_bridge: ModuleType, data_root: Path, tmp_path: Path,
) -> None:
    path = trained_bridge(train_bridge, data_root, tmp_path / "bridge.json",
                          "--dataset", "cifar100")
    meta = bridge_meta(path)
    assert (meta["in_channels"], meta["cifar100_labels"]) == (3, "coarse")
    bridge = {"bridge_weights": str(path)}
    coarse = {"dataset": "cifar100", "root": str(data_root), "holdout": 0.5}
    assert resolve("fedagg", {"data": coarse, "fedagg": bridge}).fedagg.bridge_weights == str(path)
    with pytest.raises(ConfigError, match="per coarse label, but data.cifar100_labels is fine"):
        resolve("fedagg", {"data": {**coarse, "cifar100_labels": "fine"}, "fedagg": bridge})
    with pytest.raises(ConfigError, match=r"data\.holdout is 0\.2.*data\.holdout=0\.5"):
        resolve("fedeec", {"data": {**coarse, "holdout": 0.2}, "fedagg": bridge})
    # Another 3-channel dataset may use it (its codes fit); a 1-channel one may not.
    resolve("fedagg", {"data": {"dataset": "svhn"}, "fedagg": bridge})
    with pytest.raises(ConfigError, match="encodes 3-channel images"):
        resolve("fedagg", {"data": {"dataset": "fashion_mnist"}, "fedagg": bridge})
