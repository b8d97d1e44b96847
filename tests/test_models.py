"""Tests of the model zoo: parameter counts, shapes, FedIN's parts and shared names, errors."""

from __future__ import annotations

import ast
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import flower_eec.models
from flower_eec.errors import ConfigError
from flower_eec.models import (
    CNN3,
    MODEL_NAMES,
    RESNET_BLOCKS,
    ResNet,
    build_model,
    count_parameters,
)


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a source file imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


RESNETS = tuple(name for name in MODEL_NAMES if name.startswith("resnet"))
# Shallow to deep: each name's blocks per stage are >= the previous name's, stage by stage.
DEPTH_ORDER = ("resnet10", "resnet14", "resnet18", "resnet22", "resnet26")


def test_names() -> None:
    assert MODEL_NAMES == ("cnn3", *DEPTH_ORDER, "modular")


def test_cnn3_parameter_count() -> None:
    # conv7x7 3->64, no bias:  7*7*3*64      = 9408
    # BN(64), weight + bias:   2*64          =  128
    # FC 64->48:               64*48 + 48    = 3120
    # FC 48->10:               48*10 + 10    =  490
    # total                    9408 + 128 + 3120 + 490 = 13146
    assert count_parameters(build_model("cnn3", num_classes=10)) == 13_146


@pytest.mark.parametrize(
    ("name", "expected"), [("resnet10", 4_910_922), ("resnet18", 11_181_642)]
)
def test_resnet_parameter_counts_are_the_standard_ones(
    name: str, expected: int
) -> None:
    model = build_model(name, num_classes=10, stem="imagenet")
    assert count_parameters(model) == expected


def test_cifar_stem_has_fewer_parameters() -> None:
    # Only the first conv changes: 7x7x3x64 -> 3x3x3x64 weights.
    imagenet = count_parameters(build_model("resnet18", stem="imagenet"))
    cifar = count_parameters(build_model("resnet18", stem="cifar"))
    assert imagenet - cifar == (49 - 9) * 3 * 64


MODEL_CASES: list[tuple[str, dict[str, Any]]] = [("cnn3", {})] + [
    (name, {"stem": stem}) for name in RESNETS for stem in ("imagenet", "cifar")
]


@pytest.mark.parametrize(("name", "options"), MODEL_CASES)
@pytest.mark.parametrize("input_shape", [(2, 3, 32, 32), (2, 1, 28, 28)])
def test_output_shape(
    name: str, options: dict[str, Any], input_shape: tuple[int, ...]
) -> None:
    model = build_model(name, num_classes=7, in_channels=input_shape[1], **options)
    with torch.no_grad():
        logits = model(torch.randn(*input_shape))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_parts_compose_to_forward(stem: str) -> None:
    torch.manual_seed(0)
    model = ResNet(RESNET_BLOCKS["resnet14"], stem=stem).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        composed = model.classifier(model.intermediate(model.extractor(x)))
        assert torch.equal(model(x), composed)


def test_cnn3_parts_compose_to_forward() -> None:
    model = CNN3().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model.classifier(model.extractor(x)))
        assert model.extractor(x).shape == (2, 64)


def test_intermediate_is_three_stages() -> None:
    model = ResNet(RESNET_BLOCKS["resnet22"])
    assert isinstance(model.intermediate, torch.nn.Sequential)
    assert [len(list(stage.children())) for stage in model.intermediate] == [2, 3, 3]
    assert len(list(model.extractor.get_submodule("layer1").children())) == 2


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_deeper_state_dict_is_superset_with_equal_shapes(stem: str) -> None:
    shapes = {
        name: {k: v.shape for k, v in build_model(name, stem=stem).state_dict().items()}
        for name in DEPTH_ORDER
    }
    for shallow, deep in itertools.pairwise(DEPTH_ORDER):
        assert set(shapes[shallow]) < set(shapes[deep]), (shallow, deep)
        for key, shape in shapes[shallow].items():
            assert shapes[deep][key] == shape, (shallow, deep, key)
    for keys in shapes.values():
        assert "intermediate.0.0.conv1.weight" in keys
        assert "extractor.layer1.0.conv1.weight" in keys
        assert "classifier.fc.weight" in keys


def test_width_multiplier_reduces_parameters() -> None:
    full = count_parameters(build_model("resnet10"))
    half = ResNet(RESNET_BLOCKS["resnet10"], width=0.5)
    assert count_parameters(half) < full / 3
    assert half.state_dict()["classifier.fc.weight"].shape == (10, 256)
    with torch.no_grad():
        assert half(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_tiny_width_keeps_at_least_one_channel() -> None:
    model = ResNet(RESNET_BLOCKS["resnet10"], width=0.001)
    assert model.state_dict()["classifier.fc.weight"].shape == (10, 1)


def test_models_never_import_torchvision() -> None:
    # ast.walk also sees imports inside functions, so a lazy import would fail here too.
    for path in Path(flower_eec.models.__file__).parent.glob("*.py"):
        assert "torchvision" not in imported_modules(path), path


@pytest.mark.parametrize(
    ("call", "mentions"),
    [
        (lambda: build_model("resnet50"), "resnet50"),
        (lambda: build_model("cnn3", stem="cifar"), "stem"),
        (lambda: build_model("resnet18", depth=3), "depth"),
        (lambda: build_model("resnet18", stem="tiny"), "tiny"),
        (lambda: build_model("resnet18", width=0), "width"),
        (lambda: build_model("resnet18", width="wide"), "width"),
        (lambda: build_model("cnn3", num_classes=0), "num_classes"),
        (lambda: build_model("resnet10", in_channels=1.5), "in_channels"),  # type: ignore[arg-type]
        (lambda: ResNet((1, 1, 1)), "blocks"),  # type: ignore[arg-type]
    ],
)
def test_bad_config_raises_config_error(
    call: Callable[[], object], mentions: str
) -> None:
    with pytest.raises(ConfigError, match=mentions):
        call()


def test_unknown_name_lists_allowed() -> None:
    with pytest.raises(ConfigError) as error:
        build_model("vgg11")
    for name in MODEL_NAMES:
        assert name in str(error.value)


def test_seeded_draws_the_weights_of_manual_seed_and_restores_the_stream() -> None:
    from flower_eec.models import seeded

    torch.manual_seed(7)
    expected = build_model("cnn3", 10, 3).state_dict()
    torch.manual_seed(1)
    next_draw = torch.rand(3)
    torch.manual_seed(1)
    with seeded(7):
        got = build_model("cnn3", 10, 3).state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert torch.equal(torch.rand(3), next_draw)  # the global stream went on as if untouched
    with seeded(8):
        other = build_model("cnn3", 10, 3).state_dict()
    assert not torch.equal(other["extractor.0.weight"], got["extractor.0.weight"])
