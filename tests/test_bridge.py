"""FedAgg's bridge autoencoder: layer sizes, shapes, JSON weights I/O, and the shipped weights.

Parameter counts are worked out by hand from the spec's layer list (weights + biases + BN affine).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flower_eec.errors import DataError
from flower_eec.models import count_parameters
from flower_eec.models.bridge import (
    DEFAULT_WEIGHTS,
    BridgeAutoencoder,
    bridge_digest,
    bridge_samples,
    code_shape,
    encode,
    load_bridge,
)
from flower_eec.models.weights_io import load_state_json, save_state_json


def test_parameter_counts_match_the_layer_list() -> None:
    bridge = BridgeAutoencoder()
    # conv 3->16: 432 + 16, BN 32; conv 16->8: 1152 + 8, BN 16; conv 8->4: 288 + 4.
    assert count_parameters(bridge.encoder) == 448 + 32 + 1160 + 16 + 292 == 1948
    # conv 4->8: 288 + 8; conv 8->8: 576 + 8, BN 16; conv 8->16: 1152 + 16, BN 32; 16->3: 432 + 3.
    assert count_parameters(bridge.decoder) == 296 + 584 + 16 + 1168 + 32 + 435 == 2531


def test_a_32x32_image_becomes_a_4x8x8_code_and_back_in_unit_range() -> None:
    bridge = BridgeAutoencoder().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    code = bridge.encode(x)
    assert code.shape == (2, 4, 8, 8) and bool((code >= 0).all())
    out = bridge.decode(code)
    assert out.shape == (2, 3, 32, 32)
    assert bool((out >= 0).all()) and bool((out <= 1).all())
    assert torch.equal(bridge(x), out)


def test_state_json_round_trip_is_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    bridge = BridgeAutoencoder()
    bridge.train()
    bridge(torch.rand(4, 3, 32, 32))  # moves BN running stats and num_batches_tracked (int64)
    path = save_state_json(tmp_path / "b.json", bridge.state_dict(), {"note": "test"})
    state, meta = load_state_json(path)
    assert meta == {"note": "test"}
    original = bridge.state_dict()
    assert state.keys() == original.keys()
    for name, tensor in original.items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name


def test_shipped_bridge_is_frozen_and_trained() -> None:
    bridge = load_bridge()
    assert not bridge.training
    assert not any(p.requires_grad for p in bridge.parameters())
    _, meta = load_state_json(DEFAULT_WEIGHTS)
    assert meta["dataset"].startswith("cifar10") and meta["holdout_fraction"] == 0.1
    # A smooth image (a horizontal gradient) comes back close; an untrained decoder is far off.
    ramp = torch.linspace(0.2, 0.8, 32).expand(1, 3, 32, 32)
    assert torch.mean((bridge(ramp) - ramp) ** 2).item() < 0.01


def test_bridge_samples_are_normalised_like_real_images() -> None:
    bridge = load_bridge()
    code = bridge.encode(torch.full((1, 3, 32, 32), 0.5))
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.5)
    samples = bridge_samples(bridge, code, mean, std)
    pixels = bridge.decode(code)
    for channel in range(3):
        expected = (pixels[:, channel] - mean[channel]) / std[channel]
        assert torch.allclose(samples[:, channel], expected, atol=1e-6)


def test_missing_and_corrupt_weight_files_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_bridge(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not JSON"):
        load_bridge(tmp_path / "bad.json")
    document = json.loads(DEFAULT_WEIGHTS.read_text())
    document["state_dict"]["encoder.0.bias"]["data"] = "AAAA"
    (tmp_path / "short.json").write_text(json.dumps(document))
    with pytest.raises(DataError, match="3 data bytes, expected 64"):
        load_bridge(tmp_path / "short.json")


def test_weights_of_another_model_do_not_load(tmp_path: Path) -> None:
    path = save_state_json(tmp_path / "other.json", torch.nn.Linear(2, 2).state_dict(), {})
    with pytest.raises(DataError, match="does not fit the bridge"):
        load_bridge(path)


def test_encode_scales_uint8_and_batches_without_changing_codes() -> None:
    bridge = load_bridge()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    codes = encode(bridge, images, batch_size=2)
    assert codes.shape == (5, *code_shape(images.shape)) == (5, 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(codes, bridge.encode(images.float() / 255.0), atol=1e-6)
    assert code_shape((7, 3, 64, 48)) == (4, 16, 12)
    assert encode(bridge, images[:0]).shape == (0, 4, 8, 8)


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (2, 3, 30, 32)])
def test_images_that_do_not_fit_the_bridge_name_the_fix(shape: tuple[int, ...]) -> None:
    with pytest.raises(DataError, match="scripts/train_bridge.py"):
        encode(load_bridge(), torch.zeros(shape, dtype=torch.uint8))


def test_digest_tells_bridges_apart_and_loads_alike() -> None:
    first, second = load_bridge(), load_bridge()
    assert bridge_digest(first) == bridge_digest(second) and len(bridge_digest(first)) == 16
    second.state_dict()["decoder.0.bias"][0] += 1e-3  # in place: the bridge's own tensor
    assert bridge_digest(first) != bridge_digest(second)
    assert bridge_digest(BridgeAutoencoder(in_channels=1)) != bridge_digest(first)
