"""FedAgg's bridge store: every device's bridge samples and labels, decoded once, in the cloud.

FedAgg: Wu et al., INFOCOM 2024, arXiv 2312.11489. An edge's store is the part that belongs to
its devices; both live in the ServerApp's process, so an edge keeps device ids, not copies.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from flower_eec.models.bridge import BridgeAutoencoder, decode
from flower_eec.protocol.payloads import EmbeddingPayload


class BridgeStore:
    """Bridge samples ``dec(eps)`` and labels per device, in the order the device uploaded them.

    A device's entry is replaced when it uploads again.

    Args:
        bridge: The frozen autoencoder (its decoder turns codes into bridge samples).
        mean, std: The dataset's normalisation; bridge samples are normalised like real images
            unless ``raw`` (the official demo's [0, 1] input space, kept for fidelity).
        raw: Keep bridge samples in [0, 1].
        device: Where the samples are kept (the server's torch device).
        batch_size: Codes decoded per batch.
    """

    def __init__(self, bridge: BridgeAutoencoder, mean: Sequence[float], std: Sequence[float],
                 raw: bool = False, device: torch.device | None = None,
                 batch_size: int = 1000) -> None:
        self.bridge = bridge.eval().requires_grad_(False)
        self.mean, self.std = mean, std
        self.raw = raw
        self.device = device or torch.device("cpu")
        self.batch_size = batch_size
        self._samples: dict[int, torch.Tensor] = {}
        self._labels: dict[int, torch.Tensor] = {}
        self._codes_bytes: dict[int, int] = {}
        self._payloads: dict[int, EmbeddingPayload] = {}

    def add(self, device: int, payload: EmbeddingPayload, wire_bytes: int) -> None:
        """Decode and keep a device's codes (replacing what it had); ``wire_bytes`` as received."""
        codes = torch.from_numpy(payload.embeddings)
        self._samples[device] = decode(self.bridge, codes, self.mean, self.std, self.raw,
                                       self.batch_size).to(self.device)
        self._labels[device] = torch.from_numpy(payload.labels)
        self._codes_bytes[device] = wire_bytes
        self._payloads[device] = payload

    def state(self) -> dict[int, tuple[EmbeddingPayload, int]]:
        """Every device's codes and labels as received, with their bytes on the wire."""
        return {d: (self._payloads[d], self._codes_bytes[d]) for d in self.devices()}

    def load_state(self, state: dict[int, tuple[EmbeddingPayload, int]]) -> None:
        """Hold exactly ``state()``'s devices again (decoding their codes as ``add`` does)."""
        self._samples, self._labels, self._codes_bytes, self._payloads = {}, {}, {}, {}
        for device, (payload, wire_bytes) in state.items():
            self.add(device, payload, wire_bytes)

    def __contains__(self, device: object) -> bool:
        return device in self._samples

    def devices(self) -> list[int]:
        """Devices held, ascending."""
        return sorted(self._samples)

    def num_samples(self, device: int) -> int:
        """Bridge samples of one device."""
        return int(self._labels[device].shape[0])

    def embedding_bytes(self, device: int) -> int:
        """Bytes the device's codes took on the wire (what moving them to an edge costs)."""
        return self._codes_bytes[device]

    def samples(self, devices: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Bridge samples and labels of ``devices``, concatenated in the given order."""
        devices = list(devices)
        if not devices:
            raise ValueError("no devices given")
        return (torch.cat([self._samples[d] for d in devices]),
                torch.cat([self._labels[d] for d in devices]))

