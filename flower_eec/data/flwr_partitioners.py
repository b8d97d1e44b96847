"""Flower Datasets partitioners on the in-memory training labels.

``data.partition=flwr_datasets:<Name>`` splits the training set with
``flwr_datasets.partitioner.<Name>`` instead of one of our own schemes; ``data.partitioner_args``
holds that class's keyword arguments. The partitioner sees a ``datasets.Dataset`` with two
columns, ``label`` and ``index`` (each example's position), and each device takes the ``index``
column of ``load_partition(device)``, so nothing is downloaded.

Arguments the user leaves out are filled from the run where the class takes them:
``num_partitions`` (always ``topology.num_devices``), ``partition_by`` (``"label"``), ``seed``,
``alpha`` (``data.alpha``), ``min_partition_size`` (``data.min_size``) and
``num_classes_per_partition`` (``data.classes_per_device``).

flwr-datasets is an optional extra (``pip install -e ".[flwr-datasets]"``); it is imported only
when such a partition is asked for.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from flower_eec.errors import ConfigError

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

PREFIX = "flwr_datasets:"
INSTALL = 'pip install -e ".[flwr-datasets]"'
LABEL, INDEX = "label", "index"


def is_flwr_datasets(scheme: str) -> bool:
    """Whether ``data.partition`` names a Flower Datasets partitioner."""
    return scheme.startswith(PREFIX)


def partitioner_class(scheme: str) -> type[Partitioner]:
    """The class ``flwr_datasets:<Name>`` names.

    Raises:
        ConfigError: flwr-datasets is not installed (naming the command that installs it), or
            it has no partitioner of that name.
    """
    name = scheme.removeprefix(PREFIX)
    try:
        from flwr_datasets import partitioner as module
    except ImportError:
        raise ConfigError(f"data.partition={scheme} needs the optional package flwr-datasets; "
                          f"install it with: {INSTALL}") from None
    found = getattr(module, name, None)
    if not (isinstance(found, type) and issubclass(found, module.Partitioner)
            and found is not module.Partitioner):
        names = sorted(n for n in dir(module) if n.endswith("Partitioner") and n != "Partitioner")
        raise ConfigError(f"bad value for 'data.partition': flwr_datasets.partitioner has no "
                          f"partitioner {name!r}; allowed: "
                          f"{', '.join(PREFIX + n for n in names)}")
    return found


def make_partitioner(scheme: str, args: Mapping[str, Any], num_devices: int, *, seed: int,
                     alpha: float, classes_per_device: int, min_size: int) -> Partitioner:
    """An instance of the partitioner ``scheme`` names, with ``args`` and the run's defaults
    for the arguments ``args`` leaves out (see the module's docstring).

    Raises:
        ConfigError: the package or class is missing, ``args`` sets ``num_partitions``, or the
            class refuses the arguments.
    """
    cls = partitioner_class(scheme)
    if "num_partitions" in args:
        raise ConfigError("data.partitioner_args may not set num_partitions: every device gets "
                          "one partition, so it is topology.num_devices")
    accepted = inspect.signature(cls).parameters
    defaults = {"num_partitions": num_devices, "partition_by": LABEL, "seed": seed,
                "alpha": alpha, "min_partition_size": min_size,
                "num_classes_per_partition": classes_per_device}
    kwargs = {key: value for key, value in defaults.items() if key in accepted} | dict(args)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"data.partition={scheme} with arguments {kwargs}: {err}") from None


def partition(labels: np.ndarray, num_devices: int, scheme: str, args: Mapping[str, Any], *,
              seed: int, alpha: float, classes_per_device: int,
              min_size: int) -> list[np.ndarray]:
    """Sorted int64 indices into ``labels`` for each device, as the partitioner splits them.

    Raises:
        ConfigError: the partitioner fails on these labels, makes another number of
            partitions than ``num_devices``, or leaves a device without data.
    """
    from datasets import Dataset

    partitioner = make_partitioner(scheme, args, num_devices, seed=seed, alpha=alpha,
                                   classes_per_device=classes_per_device, min_size=min_size)
    labels = np.asarray(labels)
    partitioner.dataset = Dataset.from_dict(
        {LABEL: labels.tolist(), INDEX: list(range(len(labels)))})
    try:
        if partitioner.num_partitions != num_devices:
            raise ConfigError(f"data.partition={scheme} made {partitioner.num_partitions} "
                              f"partitions for {num_devices} devices (topology.num_devices)")
        shards = [np.sort(np.asarray(partitioner.load_partition(i)[INDEX], dtype=np.int64))
                  for i in range(num_devices)]
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"data.partition={scheme} could not split {len(labels)} examples "
                          f"over {num_devices} devices: {err}") from None
    empty = [device for device, shard in enumerate(shards) if len(shard) == 0]
    if empty:
        raise ConfigError(f"data.partition={scheme} left devices {empty} without data; change "
                          "data.partitioner_args or use fewer devices")
    return shards
