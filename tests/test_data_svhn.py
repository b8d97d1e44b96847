"""SVHN's cropped digits: small .mat files in the official layout, every failure, and a whole run.

The real files are not on the test machines, so each test writes tiny ones with scipy.io.savemat:
X (32, 32, 3, N) uint8 and y (N, 1) with labels 1-10, 10 standing for the digit 0.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io as scipy_io
from datasets_helpers import write_svhn

from flower_eec.app.client_app import app
from flower_eec.data import checksums, dataset_options, load_dataset
from flower_eec.data.svhn import load_svhn
from flower_eec.errors import ConfigError, DataError
from flower_eec.grid.local import LocalGrid
from flower_eec.run import experiment
from flower_eec.run.config import resolve, to_json
from flower_eec.run.federated import federated_data


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep md5 cache writes out of the user's home."""
    monkeypatch.setenv(checksums.CACHE_ENV, str(tmp_path / "cache"))


def test_images_are_transposed_and_ten_means_zero(tmp_path: Path) -> None:
    files = write_svhn(tmp_path)
    data = load_svhn(tmp_path, verify=False)
    x, y = files["train_32x32.mat"]
    assert data.x_train.shape == (40, 3, 32, 32) and data.x_test.shape == (20, 3, 32, 32)
    assert data.x_train.dtype == np.uint8 and data.y_train.dtype == np.int64
    # Pixel (row 5, column 7) of channel 2 of image 3 is X[5, 7, 2, 3] in the .mat file.
    assert data.x_train[3, 2, 5, 7] == x[5, 7, 2, 3]
    np.testing.assert_array_equal(data.x_train, x.transpose(3, 2, 0, 1))
    assert data.y_train[:11].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert np.bincount(data.y_test).tolist() == [2] * 10
    assert data.classes == tuple("0123456789") and data.num_classes == 10
    assert (data.in_channels, data.image_size) == (3, 32)
    assert data.mean == (0.4377, 0.4438, 0.4728) and data.std == (0.1980, 0.2010, 0.1970)
    assert data.x_train.flags.c_contiguous


@pytest.mark.parametrize("where", ["folder", "svhn_subdir", "file"])
def test_root_may_be_the_folder_a_parent_or_a_file(tmp_path: Path, where: str) -> None:
    folder = tmp_path / "svhn" if where == "svhn_subdir" else tmp_path
    write_svhn(folder)
    root = folder / "train_32x32.mat" if where == "file" else tmp_path
    assert len(load_svhn(root, verify=False).y_train) == 40


def test_extra_joins_training_only_when_asked(tmp_path: Path) -> None:
    files = write_svhn(tmp_path, extra=30)
    assert len(load_svhn(tmp_path, verify=False).y_train) == 40
    data = load_dataset("svhn", tmp_path, verify=False, extra=True)
    assert len(data.y_train) == 70 and len(data.y_test) == 20
    extra_x = files["extra_32x32.mat"][0]
    np.testing.assert_array_equal(data.x_train[40:], extra_x.transpose(3, 2, 0, 1))
    assert dataset_options("svhn") == ("extra",)
    with pytest.raises(ConfigError, match="labels"):
        load_dataset("svhn", tmp_path, verify=False, labels="fine")


def test_extra_missing_names_the_file(tmp_path: Path) -> None:
    write_svhn(tmp_path)
    with pytest.raises(DataError, match=r"extra_32x32\.mat not found.*ufldl\.stanford\.edu"):
        load_svhn(tmp_path, verify=False, extra=True)


def test_md5_mismatch_names_file_official_md5_and_address(tmp_path: Path) -> None:
    write_svhn(tmp_path)
    with pytest.raises(DataError) as err:
        load_svhn(tmp_path, verify=True)
    message = str(err.value)
    assert "train_32x32.mat" in message and "md5 mismatch" in message
    assert checksums.SVHN_MD5["train_32x32.mat"] in message
    assert "ufldl.stanford.edu/housenumbers" in message and "verify=False" in message


def test_md5s_that_match_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_svhn(tmp_path)
    for name in ("train_32x32.mat", "test_32x32.mat"):
        monkeypatch.setitem(checksums.SVHN_MD5, name, checksums.md5_file(tmp_path / name))
    assert len(load_svhn(tmp_path, verify=True).y_test) == 20


def test_official_md5s_are_the_published_ones() -> None:
    assert checksums.SVHN_MD5 == {
        "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
        "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
        "extra_32x32.mat": "a93ce644f1a588dc4d68dda5feec44a7",
    }


def test_missing_file_and_missing_root(tmp_path: Path) -> None:
    write_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(DataError, match=r"test_32x32\.mat not found.*ufldl"):
        load_svhn(tmp_path, verify=False)
    with pytest.raises(DataError, match="does not exist"):
        load_svhn(tmp_path / "nowhere")


def test_truncated_and_garbage_files_name_the_file(tmp_path: Path) -> None:
    write_svhn(tmp_path)
    path = tmp_path / "train_32x32.mat"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"train_32x32\.mat: not a readable MATLAB v5 file"):
        load_svhn(tmp_path, verify=False)
    path.write_bytes(b"this is not a mat file at all" * 10)
    with pytest.raises(DataError, match=r"train_32x32\.mat.*ufldl"):
        load_svhn(tmp_path, verify=False)


def test_wrong_contents_are_refused(tmp_path: Path) -> None:
    write_svhn(tmp_path)
    path = tmp_path / "test_32x32.mat"
    scipy_io.savemat(path, {"X": np.zeros((28, 28, 3, 4), np.uint8), "y": np.ones((4, 1))})
    with pytest.raises(DataError, match=r"test_32x32\.mat: expected X as uint8 \(32, 32, 3, N\)"):
        load_svhn(tmp_path, verify=False)
    scipy_io.savemat(path, {"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.zeros((4, 1))})
    with pytest.raises(DataError, match="labels must be whole numbers 1-10"):
        load_svhn(tmp_path, verify=False)
    scipy_io.savemat(path, {"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.ones((3, 1))})
    with pytest.raises(DataError, match=r"expected y of shape \(4, 1\)"):
        load_svhn(tmp_path, verify=False)
    scipy_io.savemat(path, {"images": np.zeros((32, 32, 3, 4), np.uint8)})
    with pytest.raises(DataError, match="lacks the variables X and y"):
        load_svhn(tmp_path, verify=False)


def test_missing_scipy_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_svhn(tmp_path)
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # makes `import scipy.io` fail
    with pytest.raises(DataError, match=r"SVHN needs the scipy package.*flower-eec\[datasets\]"):
        load_svhn(tmp_path, verify=False)


def run_hierfavg(tmp_path: Path, data: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Two rounds of HierFAVG through the in-process grid and the real ClientApp."""
    config = resolve(None, {
        "method": "hierfavg", "profile": "smoke", "out": str(tmp_path / "out"),
        "data": {"verify": False, "local_test_size": 10, **data},
    })
    grid = LocalGrid(app, config.topology.num_devices, {"config-json": to_json(config)})
    return config, experiment.run(grid, config)


def test_a_federated_run_on_svhn(tmp_path: Path) -> None:
    write_svhn(tmp_path / "data", train=80, test=30)
    config, result = run_hierfavg(tmp_path, {"dataset": "svhn", "root": str(tmp_path / "data")})
    data = federated_data(config).dataset
    assert (data.name, data.num_classes, data.in_channels, data.image_size) == ("svhn", 10, 3, 32)
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    for record in result["rounds"]:
        # Every training image is on one device, and the cloud is scored on the 30 test images.
        assert sum(edge["examples"] for edge in record["edges"]) == 80
        assert 0 <= record["cloud"]["accuracy"] <= 1 and np.isfinite(record["cloud"]["loss"])
        assert record["cloud"]["accuracy"] * 30 == pytest.approx(
            round(record["cloud"]["accuracy"] * 30))
