"""Optional readers: packages that only some datasets need, imported when that dataset is read.

SVHN's .mat files need scipy and CINIC-10's PNGs need pillow; both come with the `datasets` extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from flower_eec.errors import DataError

EXTRA = "datasets"


def require(module: str, package: str, dataset: str) -> ModuleType:
    """Import `module` (from the pip package `package`), or say how to install it for `dataset`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DataError(
            f"reading {dataset} needs the {package} package, which is not installed: run "
            f"pip install 'flower-eec[{EXTRA}]' (or pip install {package})"
        ) from exc
