"""Accuracy of the Malenia attribute parser on the real lesion descriptions, per lesion type and attribute.

Usage: python benchmarks/bench_attributes.py [--data ../shared/data/real/malenia]

Prints three tables:
1. accuracy with the documented defaults for silent descriptions (what `parse_attributes` returns);
2. accuracy without defaults (only what the text states; None counts as wrong);
3. how well each default convention holds on the *coded* values of every lesion type, i.e. evidence from
   the types it was not read off (a leave-one-type-out check: the rules themselves fit nothing).

Accuracy skips empty cells; a cell with several codes ("1、2") counts any of them as correct.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from medvl3d.schema import ATTRIBUTES
from medvl3d.text.attributes import AttributeParser
from medvl3d.text.batch import format_accuracy_table, parse_descriptions

REPO = Path(__file__).resolve().parents[1]

# (description, condition on the coded row, attribute, coded value the convention predicts)
CONVENTIONS = [
    ("irregular -> heterogeneous", ("shape", 2), "homogeneity", 2),
    ("round-like -> homogeneous", ("shape", 1), "homogeneity", 1),
    ("irregular -> ill-defined", ("shape", 2), "margin", 2),
    ("round-like -> well-defined", ("shape", 1), "margin", 1),
    ("ill-defined -> irregular", ("margin", 2), "shape", 2),
    ("well-defined -> round-like", ("margin", 1), "shape", 1),
    ("silent neighbour -> separate", None, "neighbor_relation", 1),
]


def _code(cell: str) -> int | None:
    try:
        return int(float(cell))
    except ValueError:
        return None


def convention_support(files: list[Path]) -> str:
    """Fraction of coded rows per lesion type that agree with each default convention."""
    parser = AttributeParser(defaults=False)
    types = [f.stem for f in files]
    head = f"{'convention':32s} " + " ".join(f"{t[:22]:>22s}" for t in types)
    lines = [head, "-" * len(head)]
    rows_by_type = {f.stem: list(csv.DictReader(f.open(newline="", encoding="utf-8"))) for f in files}
    for name, cond, attr, value in CONVENTIONS:
        cells = []
        for t in types:
            agree = total = 0
            for row in rows_by_type[t]:
                gold = _code(row[attr])
                if gold is None:
                    continue
                if cond is None:  # only rows whose text is silent on the attribute
                    if parser.parse(row["report"], row["organ"])[attr] is not None:
                        continue
                elif _code(row[cond[0]]) != cond[1]:
                    continue
                total += 1
                agree += gold == value
            cells.append(f"{agree / total:.2f} ({total})" if total else "-")
        lines.append(f"{name:32s} " + " ".join(f"{c:>22s}" for c in cells))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "real" / "malenia")
    args = ap.parse_args()
    files = sorted(args.data.glob("*.csv"))
    if not files:
        raise SystemExit(f"no CSV files in {args.data}")
    for title, parser in (
        ("with defaults", AttributeParser()),
        ("without defaults", AttributeParser(defaults=False)),
    ):
        accuracy: dict[str, dict[str, tuple[float, int]]] = {}
        hits: dict[str, list[tuple[float, int]]] = {a: [] for a in ATTRIBUTES}
        start, n = time.perf_counter(), 0
        for f in files:
            result = parse_descriptions(f, parser=parser)
            n += len(result.rows)
            per = {g: v for g, v in result.accuracy.items() if g != "all"}
            accuracy.update(per)
            for table in per.values():
                for attr, cell in table.items():
                    hits[attr].append(cell)
        seconds = time.perf_counter() - start
        accuracy["all"] = {
            a: (sum(acc * k for acc, k in v) / sum(k for _, k in v), sum(k for _, k in v))
            for a, v in hits.items()
        }
        print(
            f"\nAttribute accuracy {title} ({n} descriptions, {n / seconds:.0f} descriptions/s incl. CSV I/O)"
        )
        print(format_accuracy_table(accuracy))
    print(
        "\nSupport of the default conventions in the coded values of each lesion type (fraction agreeing, n)"
    )
    print(convention_support(files))


if __name__ == "__main__":
    main()
