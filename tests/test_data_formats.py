"""Dataset loaders: real CIFAR-10/MNIST known answers, every accepted format, and every failure.

Fake datasets are written to tmp_path; the real ones come from $FLOWER_EEC_DATA (unset, from
../shared/data beside the clone, the developers' layout); tests that need them skip without them.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from datasets_helpers import idx_bytes

from flower_eec.data import Dataset, checksums, load_dataset, make_synthetic
from flower_eec.data.cifar10 import load_cifar10
from flower_eec.data.mnist import load_mnist
from flower_eec.errors import ConfigError, DataError


def shared_data_root() -> Path:
    """The real-data folder: $FLOWER_EEC_DATA; unset, ../shared/data beside the clone (the
    developers' layout)."""
    env = os.environ.get("FLOWER_EEC_DATA", "")
    return Path(env) if env else Path(__file__).parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep md5 cache writes out of the user's home."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(checksums.CACHE_ENV, str(cache))
    return cache


def _load_real(loader, sub: str, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    root = shared_data_root()
    if not (root / sub).is_dir():
        pytest.skip(f"real data not available at {root / sub}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(checksums.CACHE_ENV, str(tmp_path_factory.mktemp("md5cache")))
        return loader(root, verify=True)


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """Real CIFAR-10, loaded (and md5-verified) once for this module."""
    return _load_real(load_cifar10, "cifar10", tmp_path_factory)


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """Real MNIST, loaded (and md5-verified) once for this module."""
    return _load_real(load_mnist, "mnist", tmp_path_factory)


# ---------------------------------------------------------------- real data, known answers


def histogram_stats(pixels: np.ndarray) -> tuple[float, float]:
    """Exact mean and std in [0, 1] units of uint8 pixels, via a 256-bin histogram (fast)."""
    counts = np.bincount(pixels.ravel(), minlength=256)
    values = np.arange(256) / 255.0
    mean = float((counts * values).sum() / counts.sum())
    return mean, float(np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum()))


def test_real_cifar10_shapes_and_first_labels(cifar10: Dataset) -> None:
    assert cifar10.x_train.shape == (50000, 3, 32, 32)
    assert cifar10.x_test.shape == (10000, 3, 32, 32)
    assert cifar10.x_train.dtype == np.uint8 and cifar10.y_train.dtype == np.int64
    assert cifar10.y_train[:8].tolist() == [6, 9, 9, 4, 1, 1, 2, 7]
    assert cifar10.y_test[:8].tolist() == [3, 8, 8, 0, 6, 6, 1, 6]
    assert np.bincount(cifar10.y_test).tolist() == [1000] * 10
    assert np.bincount(cifar10.y_train).tolist() == [5000] * 10
    assert (cifar10.in_channels, cifar10.image_size, cifar10.num_classes) == (3, 32, 10)


def test_real_cifar10_channel_statistics_match_the_standard_ones(cifar10: Dataset) -> None:
    # The published mean/std only come out if the R, G, B planes were decoded in order.
    stats = [histogram_stats(cifar10.x_train[:, c]) for c in range(3)]
    np.testing.assert_allclose([m for m, _ in stats], cifar10.mean, atol=1e-3)
    np.testing.assert_allclose([s for _, s in stats], cifar10.std, atol=1e-3)


def test_real_mnist_shapes_labels_and_statistics(mnist: Dataset) -> None:
    assert mnist.x_train.shape == (60000, 1, 28, 28)
    assert mnist.x_test.shape == (10000, 1, 28, 28)
    assert mnist.y_train[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]
    assert mnist.y_test[:8].tolist() == [7, 2, 1, 0, 4, 1, 4, 9]
    assert np.bincount(mnist.y_test).sum() == 10000
    mean, std = histogram_stats(mnist.x_train)
    assert mean == pytest.approx(0.1307, abs=1e-3)
    assert std == pytest.approx(0.3081, abs=1e-3)


def test_load_dataset_reads_root_from_environment(
    mnist: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWER_EEC_DATA", str(shared_data_root()))
    again = load_dataset("MNIST", root="", verify=False)
    assert again.name == "mnist"
    np.testing.assert_array_equal(again.y_test, mnist.y_test)


# ---------------------------------------------------------------- fake CIFAR-10 formats


def fake_batches(records: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Six tiny random batches keyed by binary-version file name."""
    rng = np.random.default_rng(1)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    return {
        name: (
            rng.integers(0, 256, (records, 3, 32, 32), dtype=np.uint8),
            rng.integers(0, 10, records).astype(np.int64),
        )
        for name in names
    }


def write_binary_dir(folder: Path, batches: dict) -> Path:
    folder.mkdir(parents=True)
    for name, (images, labels) in batches.items():
        flat = images.reshape(len(images), -1)
        records = np.concatenate([labels.astype(np.uint8)[:, None], flat], axis=1)
        (folder / name).write_bytes(records.tobytes())
    return folder


def write_pickle_dir(folder: Path, batches: dict) -> Path:
    folder.mkdir(parents=True)
    for name, (images, labels) in batches.items():
        batch = {b"data": images.reshape(len(images), -1), b"labels": labels.tolist()}
        (folder / name.removesuffix(".bin")).write_bytes(pickle.dumps(batch))
    return folder


def expected_train(batches: dict) -> tuple[np.ndarray, np.ndarray]:
    train = [batches[f"data_batch_{i}.bin"] for i in range(1, 6)]
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])


def assert_matches(data: Dataset, batches: dict) -> None:
    x_train, y_train = expected_train(batches)
    np.testing.assert_array_equal(data.x_train, x_train)
    np.testing.assert_array_equal(data.y_train, y_train)
    np.testing.assert_array_equal(data.x_test, batches["test_batch.bin"][0])
    np.testing.assert_array_equal(data.y_test, batches["test_batch.bin"][1])


@pytest.mark.parametrize("where", ["parent", "batches_dir", "cifar10_subdir"])
def test_binary_folder_loads_from_any_root(tmp_path: Path, where: str) -> None:
    batches = fake_batches()
    if where == "cifar10_subdir":
        write_binary_dir(tmp_path / "cifar10" / "cifar-10-batches-bin", batches)
        root = tmp_path
    else:
        folder = write_binary_dir(tmp_path / "cifar-10-batches-bin", batches)
        root = tmp_path if where == "parent" else folder
    assert_matches(load_cifar10(root, verify=False), batches)


def test_binary_tarball_is_read_in_memory(tmp_path: Path) -> None:
    batches = fake_batches()
    folder = write_binary_dir(tmp_path / "src" / "cifar-10-batches-bin", batches)
    tar_path = tmp_path / "data" / "cifar-10-binary.tar.gz"
    tar_path.parent.mkdir()
    with tarfile.open(tar_path, "w:gz") as archive:
        archive.add(folder, arcname="cifar-10-batches-bin")
    assert_matches(load_cifar10(tmp_path / "data", verify=False), batches)
    assert_matches(load_cifar10(tar_path, verify=False), batches)
    assert sorted(p.name for p in tar_path.parent.iterdir()) == ["cifar-10-binary.tar.gz"]


def test_pickle_folder_loads(tmp_path: Path) -> None:
    batches = fake_batches()
    write_pickle_dir(tmp_path / "cifar-10-batches-py", batches)
    data = load_cifar10(tmp_path, verify=False)
    assert_matches(data, batches)
    assert data.mean == (0.4914, 0.4822, 0.4465)


def test_pickle_tarball_loads(tmp_path: Path) -> None:
    batches = fake_batches()
    folder = write_pickle_dir(tmp_path / "src" / "cifar-10-batches-py", batches)
    tar_path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tar_path, "w:gz") as archive:
        archive.add(folder, arcname="cifar-10-batches-py")
    assert_matches(load_cifar10(tar_path, verify=False), batches)


def test_pickle_with_foreign_globals_is_refused_not_run(tmp_path: Path) -> None:
    folder = write_pickle_dir(tmp_path / "cifar-10-batches-py", fake_batches())
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="data_batch_1"):
        load_cifar10(tmp_path, verify=False)
    assert not marker.exists()


def test_binary_md5_mismatch_names_file_and_fix(tmp_path: Path) -> None:
    write_binary_dir(tmp_path / "cifar-10-batches-bin", fake_batches())
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path, verify=True)
    message = str(err.value)
    assert "data_batch_1.bin" in message
    assert checksums.CIFAR10_BINARY_MD5["data_batch_1.bin"] in message
    assert "verify=False" in message and "cs.toronto.edu" in message


def test_pickle_md5_mismatch_is_detected(tmp_path: Path) -> None:
    write_pickle_dir(tmp_path / "cifar-10-batches-py", fake_batches())
    with pytest.raises(DataError, match=checksums.CIFAR10_PICKLE_MD5["data_batch_1"]):
        load_cifar10(tmp_path, verify=True)


def test_missing_root_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as err:
        load_cifar10(tmp_path / "nowhere")
    assert "nowhere" in str(err.value) and "FLOWER_EEC_DATA" in str(err.value)


def test_root_without_cifar10(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-binary.tar.gz"):
        load_cifar10(tmp_path)


def test_missing_batch_file(tmp_path: Path) -> None:
    folder = write_binary_dir(tmp_path / "cifar-10-batches-bin", fake_batches())
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match="data_batch_3.bin"):
        load_cifar10(tmp_path, verify=False)


def test_truncated_binary_batch(tmp_path: Path) -> None:
    folder = write_binary_dir(tmp_path / "cifar-10-batches-bin", fake_batches())
    path = folder / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"data_batch_2\.bin.*3073"):
        load_cifar10(tmp_path, verify=False)


def test_tarball_missing_member_and_truncated_tarball(tmp_path: Path) -> None:
    folder = write_binary_dir(tmp_path / "src" / "cifar-10-batches-bin", fake_batches())
    (folder / "test_batch.bin").unlink()
    tar_path = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(tar_path, "w:gz") as archive:
        archive.add(folder, arcname="cifar-10-batches-bin")
    with pytest.raises(DataError, match="test_batch.bin"):
        load_cifar10(tar_path, verify=False)
    tar_path.write_bytes(tar_path.read_bytes()[:2000])
    with pytest.raises(DataError, match="cifar-10-binary.tar.gz"):
        load_cifar10(tar_path, verify=False)


# ---------------------------------------------------------------- fake MNIST formats


def write_mnist(folder: Path, compress: dict[str, bool]) -> dict[str, np.ndarray]:
    """Write four tiny IDX files, gzip-compressing those flagged in `compress`."""
    rng = np.random.default_rng(2)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 5, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 3, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if compress.get(name, False):
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


def test_mnist_raw_and_gz_files_load(tmp_path: Path) -> None:
    arrays = write_mnist(
        tmp_path / "mnist", {"train-images-idx3-ubyte": True, "t10k-labels-idx1-ubyte": True}
    )
    data = load_mnist(tmp_path, verify=False)
    assert data.x_train.shape == (5, 1, 28, 28) and data.x_test.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(data.x_train[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert data.y_train.dtype == np.int64 and data.x_train.flags.writeable


def test_mnist_truncated_idx_names_file(tmp_path: Path) -> None:
    write_mnist(tmp_path, {})
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: truncated"):
        load_mnist(tmp_path, verify=False)


def test_mnist_bad_magic_and_broken_gzip(tmp_path: Path) -> None:
    write_mnist(tmp_path, {"train-labels-idx1-ubyte": True})
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x1f\x8bnot idx at all")
    with pytest.raises(DataError, match="train-images-idx3-ubyte: not an IDX file"):
        load_mnist(tmp_path, verify=False)
    write_mnist(tmp_path, {})
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    gz = tmp_path / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:15])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz"):
        load_mnist(tmp_path, verify=False)


def test_mnist_missing_file_and_md5_mismatch(tmp_path: Path) -> None:
    write_mnist(tmp_path, {"t10k-images-idx3-ubyte": True})
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*md5 mismatch.*lecun"):
        load_mnist(tmp_path, verify=True)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz:decompressed.*md5"):
        checksums.verify_md5(
            tmp_path / "t10k-images-idx3-ubyte.gz",
            checksums.MNIST_MD5["t10k-images-idx3-ubyte"],
            checksums.MNIST_URL,
            member="decompressed",
            data=b"not the official bytes",
        )
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*yann\.lecun"):
        load_mnist(tmp_path, verify=False)


# ---------------------------------------------------------------- md5 cache


def test_md5_cache_skips_rehash_until_file_changes(
    tmp_path: Path, private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"hello")
    good = checksums.md5_bytes(b"hello")
    calls: list[Path] = []
    real_md5_file = checksums.md5_file

    def counting_md5_file(target: Path) -> str:
        calls.append(target)
        return real_md5_file(target)

    monkeypatch.setattr(checksums, "md5_file", counting_md5_file)
    checksums.verify_md5(path, good, "URL")
    checksums.verify_md5(path, good, "URL")
    assert len(calls) == 1 and (private_cache / "md5.json").is_file()
    path.write_bytes(b"hello, changed")
    with pytest.raises(DataError, match=r"blob\.bin: md5 mismatch"):
        checksums.verify_md5(path, good, "URL")
    assert len(calls) == 2


def test_md5_cache_survives_a_corrupt_cache_file(tmp_path: Path, private_cache: Path) -> None:
    private_cache.mkdir()
    (private_cache / "md5.json").write_text("{not json")
    path = tmp_path / "blob.bin"
    path.write_bytes(b"abc")
    checksums.verify_md5(path, checksums.md5_bytes(b"abc"), "URL")


# ---------------------------------------------------------------- load_dataset and Dataset


def test_load_dataset_unknown_name_lists_allowed() -> None:
    allowed = "cifar10, cifar100, cinic10, fashion_mnist, mnist, svhn, synthetic"
    with pytest.raises(ConfigError, match=allowed):
        load_dataset("imagenet", "/tmp")


def test_load_dataset_without_root_says_how_to_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWER_EEC_DATA", raising=False)
    for root in (None, ""):
        with pytest.raises(DataError, match=r"data\.root.*FLOWER_EEC_DATA"):
            load_dataset("cifar10", root)


def test_load_dataset_synthetic_options(tmp_path: Path) -> None:
    data = load_dataset("synthetic", seed=3, num_classes=4, num_train=40, num_test=8, size=16)
    assert data.x_train.shape == (40, 3, 16, 16) and data.num_classes == 4
    with pytest.raises(ConfigError, match="colour"):
        load_dataset("synthetic", colour=True)
    with pytest.raises(ConfigError, match="num_train"):
        load_dataset("mnist", tmp_path, num_train=10)


def test_dataset_refuses_inconsistent_arrays() -> None:
    good = make_synthetic(num_classes=2, num_train=4, num_test=2, size=4)
    with pytest.raises(DataError, match="uint8"):
        dataclasses.replace(good, x_train=good.x_train.astype(np.float32))
    with pytest.raises(DataError, match="labels span"):
        dataclasses.replace(good, y_train=good.y_train + 5)
    with pytest.raises(DataError, match="one value per channel"):
        dataclasses.replace(good, mean=(0.5,))
    assert "train=4" in repr(good)


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_by_seed() -> None:
    a, b, c = make_synthetic(seed=7), make_synthetic(seed=7), make_synthetic(seed=8)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.mean == b.mean
    # The test set does not depend on the train size.
    np.testing.assert_array_equal(make_synthetic(seed=7, num_train=100).x_test, a.x_test)


def test_synthetic_is_balanced_and_learnable() -> None:
    data = make_synthetic(num_classes=10, num_train=2000, num_test=500, channels=3, size=32)
    assert data.x_train.shape == (2000, 3, 32, 32) and data.x_train.dtype == np.uint8
    assert np.bincount(data.y_train).tolist() == [200] * 10
    flat = data.x_train.reshape(2000, -1).astype(np.float32)
    centroids = np.stack([flat[data.y_train == k].mean(0) for k in range(10)])
    test = data.x_test.reshape(500, -1).astype(np.float32)
    dist = (test**2).sum(1)[:, None] - 2 * test @ centroids.T + (centroids**2).sum(1)[None]
    assert (dist.argmin(1) == data.y_test).mean() > 0.8


def test_loading_never_writes_next_to_the_data(tmp_path: Path) -> None:
    folder = write_binary_dir(tmp_path / "cifar-10-batches-bin", fake_batches())
    before = sorted(p.name for p in tmp_path.rglob("*"))
    load_cifar10(tmp_path, verify=False)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert folder.is_dir()
