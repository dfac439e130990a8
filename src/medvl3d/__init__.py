"""medvl3d: 3D medical vision-language learning."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medvl3d.infer.predictor import Predictor

__version__ = "0.1.0"


def load(path: str | os.PathLike, device: str | None = None, **kwargs: Any) -> Predictor:
    """A :class:`~medvl3d.infer.Predictor` for a checkpoint (or run) folder of any model family, rebuilt
    exactly as it was saved; ``predictor.model`` and ``predictor.info`` are the model and its config.

    ``kwargs`` go to :meth:`Predictor.from_checkpoint` (``prompts=``, ``window=``).

    >>> import medvl3d
    >>> p = medvl3d.load(vl_checkpoint)
    >>> p.family, p.model.training
    ('vl', False)
    """
    from medvl3d.infer.predictor import Predictor

    return Predictor.from_checkpoint(path, device=device, **kwargs)
