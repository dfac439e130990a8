"""Optional extras: import a package that only some features need, or say in one line how to get it.

`pip install medvl3d` runs the main job (training, zero-shot diagnosis, segmentation, the demo); plots
need `medvl3d[viz]`, TensorBoard `medvl3d[tb]`, JPEG 2000 DICOM codecs `medvl3d[dicom]`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtra", "require"]


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module`, or raise `MissingExtra` saying that `feature` needs `pip install 'medvl3d[extra]'`."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(
            f"{feature} needs {module.split('.')[0]}, which is not installed: pip install 'medvl3d[{extra}]'"
        ) from None
