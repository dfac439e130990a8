"""The typed-config builder: every key and value checked, tagged unions, plain round trips."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from medvl3d.cli import one_line
from medvl3d.typed import build_dataclass, replace_config, to_plain


@dataclass
class _A:
    kind: Literal["a"] = "a"
    size: tuple[int, int] = (1, 2)
    rate: float = 0.5


@dataclass
class _B:
    kind: Literal["b"] = "b"
    name: str = "x"


@dataclass
class _Outer:
    part: _A | _B = field(default_factory=_A)
    tags: list[str] = field(default_factory=list)
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")


def test_values_are_checked_and_converted():
    cfg = build_dataclass(_Outer, {"part": {"size": [3, 4], "rate": 1}, "tags": ["t"], "limit": 2}, "cfg")
    assert cfg.part == _A(size=(3, 4), rate=1.0) and isinstance(cfg.part.rate, float)
    assert to_plain(cfg) == {"part": {"kind": "a", "size": [3, 4], "rate": 1.0}, "tags": ["t"], "limit": 2}
    assert build_dataclass(_Outer, to_plain(cfg), "cfg") == cfg
    for bad, match in [
        ({"part": {"size": [3]}}, r"cfg.part.size expects 2 values"),
        ({"part": {"rate": "fast"}}, r"cfg.part.rate expects a float"),
        ({"part": {"size": [1, True]}}, r"cfg.part.size\[1\] expects an int"),
        ({"tags": "t"}, "cfg.tags expects a list"),
        ({"limt": 1}, r"cfg: unknown key\(s\) \['limt'\] for _Outer"),
        ({"limit": -1}, "cfg: limit must be >= 0, got -1"),
    ]:
        with pytest.raises(ValueError, match=match):
            build_dataclass(_Outer, bad, "cfg")


def test_tagged_unions_pick_their_member_by_the_literal_field():
    assert build_dataclass(_Outer, {"part": {"kind": "b", "name": "y"}}, "cfg").part == _B(name="y")
    assert build_dataclass(_Outer, {"part": {"rate": 0.1}}, "cfg").part == _A(rate=0.1)  # default member
    with pytest.raises(ValueError, match=r"kind must be one of \['a', 'b'\], got 'c'"):
        build_dataclass(_Outer, {"part": {"kind": "c"}}, "cfg")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['name'\] for _A"):
        build_dataclass(_Outer, {"part": {"name": "y"}}, "cfg")  # a field of the other member
    # replace merges into the current member, or rebuilds another member from its defaults
    cfg = _Outer(part=_A(size=(5, 6)))
    assert replace_config(cfg, {"part": {"rate": 0.2}}, "r").part == _A(size=(5, 6), rate=0.2)
    assert replace_config(cfg, {"part": {"kind": "b"}}, "r").part == _B()
    with pytest.raises(TypeError, match=r"r: unknown key\(s\) \['bogus'\]"):
        replace_config(cfg, {"bogus": 1}, "r")


def test_worker_tracebacks_become_one_line():
    wrapped = ValueError(
        "Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nValueError: labels/a.nii.gz: the label map is empty (background only)\n'
    )
    assert one_line(wrapped) == "labels/a.nii.gz: the label map is empty (background only)"
    assert one_line(ValueError("plain: message")) == "plain: message"
    assert one_line(OSError()) == "OSError"
