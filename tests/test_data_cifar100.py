"""CIFAR-100: short files in both official versions (binary and python), coarse and fine labels,
folders and tarballs, every failure, and a whole run.

A binary record is a coarse-label byte, a fine-label byte and 3072 pixels; the python version
pickles a dict with data, coarse_labels and fine_labels. The fakes map fine class f to superclass
f // 5, so each fine class has one superclass, as in the release.
"""

from __future__ import annotations

import dataclasses
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from datasets_helpers import (
    CIFAR100Split,
    cifar100_splits,
    write_cifar100_binary,
    write_cifar100_python,
)

from flower_eec.app.client_app import app
from flower_eec.data import checksums, dataset_options, load_dataset
from flower_eec.data.cifar100 import COARSE_CLASSES, FINE_CLASSES, load_cifar100
from flower_eec.errors import ConfigError, DataError
from flower_eec.grid.local import LocalGrid
from flower_eec.run import experiment
from flower_eec.run.config import resolve, to_json
from flower_eec.run.federated import federated_data


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep md5 cache writes out of the user's home."""
    monkeypatch.setenv(checksums.CACHE_ENV, str(tmp_path / "cache"))


def tarball(source: Path, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        archive.add(source, arcname=source.name)
    return path


def assert_matches(data: Any, splits: dict[str, CIFAR100Split], labels: str = "coarse") -> None:
    pick = 1 if labels == "coarse" else 2
    np.testing.assert_array_equal(data.x_train, splits["train"][0])
    np.testing.assert_array_equal(data.y_train, splits["train"][pick])
    np.testing.assert_array_equal(data.x_test, splits["test"][0])
    np.testing.assert_array_equal(data.y_test, splits["test"][pick])


@pytest.mark.parametrize("version", ["binary", "python"])
def test_both_versions_give_coarse_and_fine_labels(tmp_path: Path, version: str) -> None:
    splits = cifar100_splits()
    if version == "binary":
        write_cifar100_binary(tmp_path / "cifar-100-binary", splits)
    else:
        write_cifar100_python(tmp_path / "cifar-100-python", splits)
    coarse = load_cifar100(tmp_path, verify=False)
    assert_matches(coarse, splits, "coarse")
    assert (coarse.num_classes, coarse.classes) == (20, COARSE_CLASSES)
    fine = load_cifar100(tmp_path, verify=False, labels="fine")
    assert_matches(fine, splits, "fine")
    assert (fine.num_classes, fine.classes) == (100, FINE_CLASSES)
    assert coarse.x_train.shape == (30, 3, 32, 32) and coarse.y_train.dtype == np.int64
    assert (coarse.in_channels, coarse.image_size, coarse.name) == (3, 32, "cifar100")
    assert coarse.mean == (0.5071, 0.4865, 0.4409) and coarse.std == (0.2673, 0.2564, 0.2762)


def test_class_names_are_the_releases() -> None:
    assert len(COARSE_CLASSES) == 20 and len(FINE_CLASSES) == 100 == len(set(FINE_CLASSES))
    assert list(FINE_CLASSES) == sorted(FINE_CLASSES)  # the release lists them alphabetically
    assert (COARSE_CLASSES[0], COARSE_CLASSES[-1]) == ("aquatic_mammals", "vehicles_2")
    assert (FINE_CLASSES[0], FINE_CLASSES[-1]) == ("apple", "worm")


def test_class_names_must_fit_the_label_choice(tmp_path: Path) -> None:
    write_cifar100_binary(tmp_path / "cifar-100-binary", cifar100_splits())
    coarse = load_cifar100(tmp_path, verify=False)
    with pytest.raises(DataError, match="100 class names for 20 classes"):
        dataclasses.replace(coarse, classes=FINE_CLASSES)


def test_binary_pixels_are_planes_after_two_label_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    record = np.zeros(3074, np.uint8)
    record[:2] = (7, 36)  # superclass 7 (insects), class 36 (hamster)
    record[2 + 1024 + 33] = 200  # green plane, row 1, column 1
    (folder / "train.bin").write_bytes(record.tobytes())
    (folder / "test.bin").write_bytes(record.tobytes())
    data = load_cifar100(folder, verify=False)
    assert data.y_train.tolist() == [7] and data.x_train[0, 1, 1, 1] == 200
    assert int(data.x_train.sum()) == 200
    assert load_cifar100(folder, verify=False, labels="fine").y_test.tolist() == [36]


@pytest.mark.parametrize("version", ["binary", "python"])
def test_tarballs_are_read_without_extracting(tmp_path: Path, version: str) -> None:
    splits = cifar100_splits()
    write = write_cifar100_binary if version == "binary" else write_cifar100_python
    source = write(tmp_path / "src" / f"cifar-100-{version}", splits)
    tar_path = tarball(source, tmp_path / "data" / f"cifar-100-{version}.tar.gz")
    assert_matches(load_cifar100(tar_path, verify=False, labels="fine"), splits, "fine")
    assert_matches(load_cifar100(tmp_path / "data", verify=False), splits)
    assert sorted(p.name for p in tar_path.parent.iterdir()) == [tar_path.name]


def test_cifar100_subfolder_of_a_shared_root(tmp_path: Path) -> None:
    splits = cifar100_splits()
    write_cifar100_binary(tmp_path / "cifar100" / "cifar-100-binary", splits)
    assert_matches(load_cifar100(tmp_path, verify=False), splits)


def test_load_dataset_passes_the_label_choice(tmp_path: Path) -> None:
    splits = cifar100_splits()
    write_cifar100_python(tmp_path / "cifar-100-python", splits)
    assert load_dataset("cifar100", tmp_path, verify=False).num_classes == 20
    assert load_dataset("CIFAR100", tmp_path, verify=False, labels="fine").num_classes == 100
    assert dataset_options("cifar100") == ("labels",)
    with pytest.raises(ConfigError, match="coarse, fine"):
        load_cifar100(tmp_path, verify=False, labels="superclass")


def test_python_version_md5s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_cifar100_python(tmp_path / "cifar-100-python", cifar100_splits())
    with pytest.raises(DataError) as err:
        load_cifar100(tmp_path, verify=True)
    message = str(err.value)
    assert "md5 mismatch" in message and "cs.toronto.edu" in message
    assert checksums.CIFAR100_PICKLE_MD5["train"] in message and "cifar-100-python/train" in message
    for name in ("train", "test"):
        monkeypatch.setitem(checksums.CIFAR100_PICKLE_MD5, name, checksums.md5_file(folder / name))
    assert load_cifar100(tmp_path, verify=True).num_classes == 20


def test_binary_tarball_is_checked_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_cifar100_binary(tmp_path / "src" / "cifar-100-binary", cifar100_splits())
    tar_path = tarball(source, tmp_path / "cifar-100-binary.tar.gz")
    with pytest.raises(DataError, match="03b5dce01913d631647c71ecec9e9cb8") as err:
        load_cifar100(tar_path, verify=True)
    assert "cifar-100-binary.tar.gz: md5 mismatch" in str(err.value)
    monkeypatch.setitem(
        checksums.CIFAR100_TAR_MD5, "cifar-100-binary.tar.gz", checksums.md5_file(tar_path)
    )
    assert len(load_cifar100(tar_path, verify=True).y_train) == 30


def test_extracted_binary_files_are_checked_by_count(tmp_path: Path) -> None:
    write_cifar100_binary(tmp_path / "cifar-100-binary", cifar100_splits())
    with pytest.raises(DataError, match=r"train\.bin: 30 images, but the official release has "
                                        r"50,000.*cs\.toronto\.edu.*verify=False"):
        load_cifar100(tmp_path, verify=True)


def test_official_md5s_are_the_published_ones() -> None:
    assert checksums.CIFAR100_TAR_MD5 == {
        "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-binary.tar.gz": "03b5dce01913d631647c71ecec9e9cb8",
    }


def test_missing_root_missing_file_and_nothing_found(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="CIFAR-100 data root .*does not exist"):
        load_cifar100(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"cifar-100-binary\.tar\.gz.*cs\.toronto\.edu"):
        load_cifar100(tmp_path)
    folder = write_cifar100_binary(tmp_path / "cifar-100-binary", cifar100_splits())
    (folder / "test.bin").unlink()
    with pytest.raises(DataError, match=r"test\.bin: missing CIFAR-100 file.*cs\.toronto\.edu"):
        load_cifar100(tmp_path, verify=False)


def test_truncated_binary_file(tmp_path: Path) -> None:
    folder = write_cifar100_binary(tmp_path / "cifar-100-binary", cifar100_splits())
    path = folder / "train.bin"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"train\.bin: truncated or not a CIFAR-100 binary.*3074"):
        load_cifar100(tmp_path, verify=False)


def test_tarball_missing_member_and_truncated_tarball(tmp_path: Path) -> None:
    source = write_cifar100_python(tmp_path / "src" / "cifar-100-python", cifar100_splits())
    (source / "test").unlink()
    tar_path = tarball(source, tmp_path / "cifar-100-python.tar.gz")
    with pytest.raises(DataError, match=r"lacks CIFAR-100 member\(s\) test"):
        load_cifar100(tar_path, verify=False)
    tar_path.write_bytes(tar_path.read_bytes()[:3000])
    with pytest.raises(DataError, match=r"cifar-100-python\.tar\.gz: damaged or truncated"):
        load_cifar100(tar_path, verify=False)


def test_bad_labels_are_refused(tmp_path: Path) -> None:
    splits = cifar100_splits()
    images, coarse, fine = splits["test"]
    splits["test"] = (images, coarse, np.where(np.arange(len(fine)) == 3, 100, fine))
    write_cifar100_binary(tmp_path / "a" / "cifar-100-binary", splits)
    with pytest.raises(DataError, match=r"test\.bin: fine labels must be 0-99"):
        load_cifar100(tmp_path / "a", verify=False)
    splits = cifar100_splits()
    _, coarse, fine = splits["train"]
    fine[:2] = 7
    coarse[:2] = (1, 2)  # one fine class filed under two superclasses
    write_cifar100_python(tmp_path / "b" / "cifar-100-python", splits)
    with pytest.raises(DataError, match="fine class 7 appears under several coarse classes"):
        load_cifar100(tmp_path / "b", verify=False)


def test_pickle_with_foreign_globals_is_refused_not_run(tmp_path: Path) -> None:
    folder = write_cifar100_python(tmp_path / "cifar-100-python", cifar100_splits())
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (folder / "train").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match=r"cifar-100-python/train: not a readable"):
        load_cifar100(tmp_path, verify=False)
    assert not marker.exists()


def test_config_accepts_coarse_or_fine_only() -> None:
    config = resolve(None, {"data": {"dataset": "cifar100"}})
    assert config.data.cifar100_labels == "coarse"
    assert resolve(None, {"data": {"cifar100_labels": "fine"}}).data.cifar100_labels == "fine"
    with pytest.raises(ConfigError, match=r"data\.cifar100_labels.*coarse, fine"):
        resolve(None, {"data": {"cifar100_labels": "medium"}})


def test_a_federated_run_on_cifar100_coarse(tmp_path: Path) -> None:
    splits = cifar100_splits(train=80, test=40)
    write_cifar100_binary(tmp_path / "data" / "cifar-100-binary", splits)
    config = resolve(None, {
        "method": "hierfavg", "profile": "smoke", "out": str(tmp_path / "out"),
        "data": {"dataset": "cifar100", "root": str(tmp_path / "data"), "verify": False,
                 "local_test_size": 10},
    })
    grid = LocalGrid(app, config.topology.num_devices, {"config-json": to_json(config)})
    result = experiment.run(grid, config)
    data = federated_data(config).dataset
    assert (data.name, data.num_classes, data.in_channels) == ("cifar100", 20, 3)
    np.testing.assert_array_equal(data.y_test, splits["test"][1])
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    for record in result["rounds"]:
        assert sum(edge["examples"] for edge in record["edges"]) == 80
        accuracy = record["cloud"]["accuracy"]
        assert 0 <= accuracy <= 1 and accuracy * 40 == pytest.approx(round(accuracy * 40))


def test_a_federated_run_on_cifar100_fine(tmp_path: Path) -> None:
    splits = cifar100_splits(train=80, test=40)
    write_cifar100_python(tmp_path / "data" / "cifar-100-python", splits)
    config = resolve(None, {
        "method": "hierfavg", "profile": "smoke", "out": str(tmp_path / "out"),
        "data": {"dataset": "cifar100", "cifar100_labels": "fine", "verify": False,
                 "root": str(tmp_path / "data"), "local_test_size": 10},
    })
    grid = LocalGrid(app, config.topology.num_devices, {"config-json": to_json(config)})
    result = experiment.run(grid, config)
    data = federated_data(config).dataset
    assert (data.num_classes, data.classes) == (100, FINE_CLASSES)
    np.testing.assert_array_equal(data.y_test, splits["test"][2])
    assert [r["round"] for r in result["rounds"]] == [1, 2]
