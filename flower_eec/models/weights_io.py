"""Model weights as JSON (base64 of little-endian bytes), for files shipped inside the Flower app.

Flower's app bundle carries only .py/.toml/.md/.yaml/.json files, so FedAgg's bridge weights travel
as JSON; the format is ``{"format", "meta", "state_dict": {name: {shape, dtype, data}}}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flower_eec.errors import DataError

FORMAT = "flower-eec-state-dict/1"
# Wire dtype name -> little-endian numpy dtype; int64 carries BatchNorm's num_batches_tracked.
_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int64": np.dtype("<i8"),
}


def state_to_json(state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Encode a state dict and its provenance as a JSON-serialisable dict."""
    tensors: dict[str, Any] = {}
    for name, tensor in state_dict.items():
        array = tensor.detach().cpu().numpy()
        wire = str(array.dtype)
        if wire not in _DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {wire}; storable: {sorted(_DTYPES)}")
        raw = np.ascontiguousarray(array, dtype=_DTYPES[wire]).tobytes()
        tensors[name] = {
            "shape": list(array.shape),
            "dtype": wire,
            "data": base64.b64encode(raw).decode("ascii"),
        }
    return {"format": FORMAT, "meta": dict(meta), "state_dict": tensors}


def save_state_json(
    path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]
) -> Path:
    """Write ``state_dict`` with provenance ``meta`` (JSON values only) to ``path``; return it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(state_to_json(state_dict, meta), indent=1, sort_keys=True)
    target.write_text(text + "\n", encoding="utf-8")
    return target


def _decode_tensor(where: str, entry: Any) -> torch.Tensor:
    if not isinstance(entry, dict) or set(entry) != {"shape", "dtype", "data"}:
        raise DataError(f"{where}: expected an object with keys shape, dtype, data")
    shape, wire, data = entry["shape"], entry["dtype"], entry["data"]
    if wire not in _DTYPES:
        raise DataError(f"{where}: dtype {wire!r} is not one of {sorted(_DTYPES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise DataError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, TypeError) as err:
        raise DataError(f"{where}: data is not valid base64 ({err})") from err
    dtype = _DTYPES[wire]
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{where}: {len(raw)} data bytes, expected {expected} for {wire} {shape}")
    array = np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    return torch.from_numpy(array)


def state_from_json(
    document: Any, source: str = "weights"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Decode what ``state_to_json`` made: ``(state_dict, meta)``. Raise DataError if malformed."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise DataError(f"{source}: not a {FORMAT} document (format {found!r})")
    tensors, meta = document.get("state_dict"), document.get("meta", {})
    if not isinstance(tensors, dict) or not isinstance(meta, dict):
        raise DataError(f"{source}: 'state_dict' and 'meta' must be JSON objects")
    state = {name: _decode_tensor(f"{source}: tensor {name!r}", e) for name, e in tensors.items()}
    return state, meta


def load_state_json(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a weights file written by ``save_state_json``: ``(state_dict, meta)``.

    Raises:
        DataError: The file is missing, is not JSON, or a tensor is malformed.
    """
    source = Path(path)
    try:
        document = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(f"weights file {source} does not exist") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"weights file {source} is unreadable or not JSON ({err})") from err
    return state_from_json(document, str(source))
