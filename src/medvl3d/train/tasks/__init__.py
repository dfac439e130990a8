"""Training objectives as task modules: `build_task(name, model, **params)`.

Vision-language pretraining (`clip`, `siglip`, `brgsa`, `gtgm`) and supervised segmentation
(`segmentation`, and `avfusion` for language-guided artery/vein segmentation); each declares what the
training loop needs to know about it (see `base.Task`).
"""

from __future__ import annotations

from medvl3d.train.tasks.avfusion import AvFusionTask
from medvl3d.train.tasks.base import (
    TASKS,
    DataFacts,
    Task,
    TaskContext,
    build_task,
    check_task,
    log_parts,
    register_task,
    task_class,
)
from medvl3d.train.tasks.malenia import MaleniaTask
from medvl3d.train.tasks.segmentation import SegmentationTask
from medvl3d.train.tasks.vl import BrgSATask, ClipTask, GTGMTask, SigLIPTask, VLTask

__all__ = [
    "TASKS",
    "AvFusionTask",
    "BrgSATask",
    "ClipTask",
    "DataFacts",
    "GTGMTask",
    "MaleniaTask",
    "SegmentationTask",
    "SigLIPTask",
    "Task",
    "TaskContext",
    "VLTask",
    "build_task",
    "check_task",
    "log_parts",
    "register_task",
    "task_class",
]
