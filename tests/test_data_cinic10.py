"""CINIC-10: a few PNGs in the release's train/ valid/ test/ class folders (or its tarball), the
splits (train + valid for training), every failure, and a whole run.
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from datasets_helpers import write_cinic
from PIL import Image

from flower_eec.app.client_app import app
from flower_eec.data import checksums, cinic10, dataset_options, load_dataset
from flower_eec.data.cinic10 import CLASSES, load_cinic10
from flower_eec.errors import DataError
from flower_eec.grid.local import LocalGrid
from flower_eec.run import experiment
from flower_eec.run.config import resolve, to_json
from flower_eec.run.federated import federated_data


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep md5 cache writes out of the user's home."""
    monkeypatch.setenv(checksums.CACHE_ENV, str(tmp_path / "cache"))


def tarball(folder: Path, path: Path, prefix: str) -> Path:
    """Pack train/ valid/ test/ as the release does, under `prefix` (e.g. "." or "CINIC-10")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for split in ("train", "valid", "test"):
            archive.add(folder / split, arcname=f"{prefix}/{split}")
        readme = folder / "README.md"
        readme.write_text("CINIC-10")
        archive.add(readme, arcname=f"{prefix}/README.md")
    return path


def test_train_and_valid_train_and_test_tests(tmp_path: Path) -> None:
    written = write_cinic(tmp_path)
    data = load_cinic10(tmp_path, verify=False)
    assert data.x_train.shape == (30, 3, 32, 32) and data.x_test.shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(
        data.x_train, np.concatenate([written["train"][0], written["valid"][0]]))
    np.testing.assert_array_equal(
        data.y_train, np.concatenate([written["train"][1], written["valid"][1]]))
    np.testing.assert_array_equal(data.x_test, written["test"][0])
    assert data.y_test.tolist() == list(range(10)) and data.y_train.dtype == np.int64
    assert (data.name, data.num_classes, data.in_channels) == ("cinic10", 10, 3)
    assert data.image_size == 32
    assert data.classes == CLASSES and CLASSES[0] == "airplane" and CLASSES[-1] == "truck"
    assert data.mean == (0.47889522, 0.47227842, 0.43047404)
    assert data.std == (0.24205776, 0.23828046, 0.25874835)


def test_valid_can_be_left_out(tmp_path: Path) -> None:
    written = write_cinic(tmp_path)
    data = load_dataset("cinic10", tmp_path, verify=False, use_valid=False)
    np.testing.assert_array_equal(data.x_train, written["train"][0])
    assert len(data.y_test) == 10
    assert dataset_options("cinic10") == ("use_valid",)


def test_greyscale_pngs_are_widened_to_rgb(tmp_path: Path) -> None:
    write_cinic(tmp_path)
    grey = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    Image.fromarray(grey).save(tmp_path / "test" / "truck" / "n0_zzz.png")  # 2-D uint8: mode L
    data = load_cinic10(tmp_path, verify=False)
    assert data.y_test[-1] == 9 and len(data.y_test) == 11
    for channel in range(3):
        np.testing.assert_array_equal(data.x_test[-1, channel], grey)


@pytest.mark.parametrize("prefix", [".", "CINIC-10"])
def test_tarball_is_read_without_extracting(tmp_path: Path, prefix: str) -> None:
    write_cinic(tmp_path / "src")
    from_folder = load_cinic10(tmp_path / "src", verify=False)
    tar_path = tarball(tmp_path / "src", tmp_path / "data" / "CINIC-10.tar.gz", prefix)
    for root in (tar_path, tmp_path / "data"):
        data = load_cinic10(root, verify=False)
        np.testing.assert_array_equal(data.x_train, from_folder.x_train)
        np.testing.assert_array_equal(data.y_test, from_folder.y_test)
    assert sorted(p.name for p in tar_path.parent.iterdir()) == ["CINIC-10.tar.gz"]


@pytest.mark.parametrize("sub", ["cinic10", "cinic-10", "CINIC-10"])
def test_found_under_a_shared_root(tmp_path: Path, sub: str) -> None:
    write_cinic(tmp_path / sub)
    assert len(load_cinic10(tmp_path, verify=False).y_train) == 30


def test_verify_counts_nine_thousand_per_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_cinic(tmp_path)
    with pytest.raises(DataError) as err:
        load_cinic10(tmp_path, verify=True)
    message = str(err.value)
    assert "train/airplane" in message and "2 images, but the official release has 9,000" in message
    assert "doi.org/10.7488/ds/2448" in message and "verify=False" in message
    monkeypatch.setattr(cinic10, "PER_CLASS", 2)
    with pytest.raises(DataError, match=r"valid/airplane.*1 images"):
        load_cinic10(tmp_path, verify=True)
    (tmp_path / "valid" / "cat" / "n03_000.png").unlink()
    monkeypatch.setattr(cinic10, "PER_CLASS", 1)
    with pytest.raises(DataError, match=r"train/airplane.*2 images"):
        load_cinic10(tmp_path, verify=True)


def test_verify_passes_on_complete_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cinic(tmp_path, {"train": 1, "valid": 1, "test": 1})
    monkeypatch.setattr(cinic10, "PER_CLASS", 1)
    assert len(load_cinic10(tmp_path, verify=True).y_train) == 20


def test_missing_root_and_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="CINIC-10 data root .*does not exist"):
        load_cinic10(tmp_path / "nowhere")
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(DataError, match=r"CINIC-10 not found.*train/, valid/, test/.*CINIC-10\.tar"
                                        r"\.gz.*doi\.org/10\.7488/ds/2448"):
        load_cinic10(tmp_path, verify=False)


def test_unknown_class_folder_and_empty_split(tmp_path: Path) -> None:
    write_cinic(tmp_path)
    (tmp_path / "valid" / "airplanes").mkdir()
    with pytest.raises(DataError, match=r"valid/airplanes: unexpected class folder.*airplane, "):
        load_cinic10(tmp_path, verify=False)
    (tmp_path / "valid" / "airplanes").rmdir()
    (tmp_path / "valid" / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    (tmp_path / "valid" / "notes.txt").write_text("not an image")
    assert len(load_cinic10(tmp_path, verify=False).y_train) == 30
    for path in (tmp_path / "test").rglob("*.png"):
        path.unlink()
    with pytest.raises(DataError, match="no PNG images in the test/ split"):
        load_cinic10(tmp_path, verify=False)


def test_corrupt_and_wrong_size_pngs_name_the_file(tmp_path: Path) -> None:
    write_cinic(tmp_path)
    path = tmp_path / "train" / "dog" / "n05_001.png"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match=r"dog/n05_001\.png: not a readable PNG.*doi\.org"):
        load_cinic10(tmp_path, verify=False)
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(path)
    with pytest.raises(DataError, match=r"n05_001\.png: image is 28x28, expected 32x32"):
        load_cinic10(tmp_path, verify=False)


def test_truncated_tarball(tmp_path: Path) -> None:
    write_cinic(tmp_path / "src")
    tar_path = tarball(tmp_path / "src", tmp_path / "CINIC-10.tar.gz", ".")
    tar_path.write_bytes(tar_path.read_bytes()[:4000])
    with pytest.raises(DataError, match=r"CINIC-10\.tar\.gz: damaged or truncated archive"):
        load_cinic10(tar_path, verify=False)


def test_missing_pillow_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_cinic(tmp_path)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)  # makes `import PIL.Image` fail
    with pytest.raises(DataError, match=r"CINIC-10 needs the pillow.*flower-eec\[datasets\]"):
        load_cinic10(tmp_path, verify=False)


def test_a_federated_run_on_cinic10(tmp_path: Path) -> None:
    write_cinic(tmp_path / "data", {"train": 5, "valid": 3, "test": 3})
    config = resolve(None, {
        "method": "hierfavg", "profile": "smoke", "out": str(tmp_path / "out"),
        "data": {"dataset": "cinic10", "root": str(tmp_path / "data"), "verify": False,
                 "local_test_size": 10},
    })
    grid = LocalGrid(app, config.topology.num_devices, {"config-json": to_json(config)})
    result = experiment.run(grid, config)
    data = federated_data(config).dataset
    assert (data.name, data.num_classes, data.in_channels) == ("cinic10", 10, 3)
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    for record in result["rounds"]:
        assert sum(edge["examples"] for edge in record["edges"]) == 80  # train 50 + valid 30
        accuracy = record["cloud"]["accuracy"]
        assert 0 <= accuracy <= 1 and accuracy * 30 == pytest.approx(round(accuracy * 30))
