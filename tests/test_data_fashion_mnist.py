"""Fashion-MNIST: tiny IDX files (gzip-compressed as published, or extracted), every failure, and a
whole run on 1x28x28 images.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from datasets_helpers import FASHION_MNIST_FILES, idx_bytes, write_fashion

from flower_eec.app.client_app import app
from flower_eec.data import checksums, load_dataset
from flower_eec.data.fashion_mnist import CLASSES, load_fashion_mnist
from flower_eec.errors import DataError
from flower_eec.grid.local import LocalGrid
from flower_eec.run import experiment
from flower_eec.run.config import resolve, to_json
from flower_eec.run.federated import federated_data


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep md5 cache writes out of the user's home."""
    monkeypatch.setenv(checksums.CACHE_ENV, str(tmp_path / "cache"))


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_load_with_their_classes(tmp_path: Path, gz: bool) -> None:
    arrays = write_fashion(tmp_path, gz=gz)
    data = load_fashion_mnist(tmp_path, verify=False)
    assert data.x_train.shape == (12, 1, 28, 28) and data.x_test.shape == (10, 1, 28, 28)
    np.testing.assert_array_equal(data.x_train[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert data.y_train.dtype == np.int64 and data.x_train.flags.writeable
    assert (data.name, data.num_classes, data.in_channels, data.image_size) == (
        "fashion_mnist", 10, 1, 28)
    assert data.classes == CLASSES and CLASSES[0] == "T-shirt/top" and CLASSES[9] == "Ankle boot"
    assert data.mean == (0.2860,) and data.std == (0.3530,)


@pytest.mark.parametrize("sub", ["fashion_mnist", "fashion-mnist", "FashionMNIST/raw", "fashion"])
def test_found_in_the_usual_subfolders(tmp_path: Path, sub: str) -> None:
    arrays = write_fashion(tmp_path / sub)
    data = load_dataset("fashion_mnist", tmp_path, verify=False)
    np.testing.assert_array_equal(data.y_train, arrays["train-labels-idx1-ubyte"])


def test_the_published_gz_wins_over_an_extracted_copy(tmp_path: Path) -> None:
    arrays = write_fashion(tmp_path, gz=True, seed=5)
    write_fashion(tmp_path, gz=False, seed=6)
    data = load_fashion_mnist(tmp_path, verify=False)
    np.testing.assert_array_equal(data.x_test[:, 0], arrays["t10k-images-idx3-ubyte"])


def test_gz_md5_mismatch_names_file_and_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fashion(tmp_path)
    with pytest.raises(DataError) as err:
        load_fashion_mnist(tmp_path, verify=True)
    message = str(err.value)
    assert "train-images-idx3-ubyte.gz: md5 mismatch" in message
    assert "8d4fb7e6c68d591d4c3dfef9ec88bf0d" in message
    assert "github.com/zalandoresearch/fashion-mnist" in message and "verify=False" in message
    for name in FASHION_MNIST_FILES:
        gz = f"{name}.gz"
        monkeypatch.setitem(checksums.FASHION_MNIST_GZ_MD5, gz, checksums.md5_file(tmp_path / gz))
    assert len(load_fashion_mnist(tmp_path, verify=True).y_train) == 12


def test_official_md5s_are_the_published_ones() -> None:
    assert checksums.FASHION_MNIST_GZ_MD5 == {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }


def test_extracted_files_are_checked_by_count(tmp_path: Path) -> None:
    write_fashion(tmp_path, gz=False)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: 12 images, but the official "
                                        r"release has 60,000.*zalandoresearch"):
        load_fashion_mnist(tmp_path, verify=True)


def test_missing_truncated_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="Fashion-MNIST data root .*does not exist"):
        load_fashion_mnist(tmp_path / "nowhere")
    write_fashion(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz \(or t10k-labels-idx1-ubyte\)"
                                        r" not found.*zalandoresearch"):
        load_fashion_mnist(tmp_path, verify=False)
    write_fashion(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: truncated.*zalandoresearch"):
        load_fashion_mnist(tmp_path, verify=False)
    write_fashion(tmp_path, gz=False)
    gz = tmp_path / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + bytes(4))[:12])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: not a readable gzip"):
        load_fashion_mnist(tmp_path, verify=False)


def test_wrong_shapes_and_labels_are_refused(tmp_path: Path) -> None:
    write_fashion(tmp_path, gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((10, 32, 32))))
    with pytest.raises(DataError, match=r"expected uint8 images of shape \(N, 28, 28\)"):
        load_fashion_mnist(tmp_path, verify=False)
    write_fashion(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(10, 10)))
    with pytest.raises(DataError, match="label 10 is not a class 0-9"):
        load_fashion_mnist(tmp_path, verify=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(9)))
    with pytest.raises(DataError, match="expected 10 labels"):
        load_fashion_mnist(tmp_path, verify=False)


def test_a_federated_run_on_fashion_mnist(tmp_path: Path) -> None:
    write_fashion(tmp_path / "data", train=80, test=30)
    config = resolve(None, {
        "method": "hierfavg", "profile": "smoke", "out": str(tmp_path / "out"),
        "data": {"dataset": "fashion_mnist", "root": str(tmp_path / "data"), "verify": False,
                 "local_test_size": 10},
    })
    grid = LocalGrid(app, config.topology.num_devices, {"config-json": to_json(config)})
    result = experiment.run(grid, config)
    data = federated_data(config).dataset
    assert (data.name, data.in_channels, data.image_size) == ("fashion_mnist", 1, 28)
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    for record in result["rounds"]:
        assert sum(edge["examples"] for edge in record["edges"]) == 80
        accuracy = record["cloud"]["accuracy"]
        assert 0 <= accuracy <= 1 and accuracy * 30 == pytest.approx(round(accuracy * 30))
