"""Where loaders look for dataset files under a user-given root.

Users point at either the dataset folder itself or a shared parent holding several datasets.
"""

from __future__ import annotations

from pathlib import Path

from flower_eec.errors import DataError


def existing_root(root: str | Path, dataset: str, url: str) -> Path:
    """Return `root` as an expanded Path, or raise DataError if it does not exist."""
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(
            f"{dataset} data root {path} does not exist. Download {dataset} from {url} and set "
            "`data.root` (config key) or the FLOWER_EEC_DATA environment variable to its folder."
        )
    return path


def search_dirs(root: Path, subdirs: tuple[str, ...]) -> list[Path]:
    """Return `root` followed by each existing `root/<subdir>`, the places a loader looks."""
    if root.is_file():
        return [root.parent]
    return [root] + [root / sub for sub in subdirs if (root / sub).is_dir()]
