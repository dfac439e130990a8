"""What a trained Malenia (or name-only) model's tokens say about a lesion: one 48^3 window centred on each
valid lesion of a type, per token its mask's Dice with the lesion, its lesion probability, its top
predicted values (names for the name-only model; location, density and shape for Malenia) and the
probability it gives each value of the type's query (what the gate reads; the evaluation's query).

Usage:
    python benchmarks/malenia_token_probe.py --run runs/bench_malenia/runs/name_only_seed0 \
        --data runs/bench_malenia/data --type renal_cyst [--cases 2] [-o probe.json]
    python benchmarks/malenia_token_probe.py --run runs/bench_malenia/runs/name_only_seed0 \
        --data runs/bench_malenia/data --name-top1 [-o top1.json]   # the whole valid split, top-1 name gate
    python benchmarks/malenia_token_probe.py --run runs/bench_malenia/runs/malenia_seed0 \
        --data runs/bench_malenia/data --prior-balanced [-o balanced.json]   # rare values up-weighted
    python benchmarks/malenia_token_probe.py --run runs/bench_malenia/runs/malenia_seed0 \
        --data runs/bench_malenia/data --organ-gate exclude [-o gate.json]   # queries bounded by organ head
    python benchmarks/malenia_token_probe.py --run runs/bench_malenia/runs/malenia_seed0 \
        --data runs/bench_malenia/data --organ-head [-o organs.json]   # where it puts each type's voxels

Why the name-only query finds nothing where Malenia does: its masks cover the lesion, but its name
predictions are too diffuse for the query's gate (a token is kept when the queried name has probability
>= 0.5). Why Malenia misses renal oncocytoma (hyperdense): its covering token leans hypodense, the
common value; `--prior-balanced` tests whether dividing by the values' training frequencies helps. Why
queries are not bounded by the model's organ head: `--organ-gate` scores that, `--organ-head` shows
where the head puts each type's lesions.
Printed and written as JSON (commit, command, per token numbers or scores).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from medvl3d.atomic import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_record import git_commit  # noqa: E402


def probe(run: Path, data: Path, lesion_type: str, cases: int) -> list[dict]:
    from medvl3d.data.datasets import open_split
    from medvl3d.data.lesion_knowledge import (
        TYPE_QUERY_ATTRIBUTES,
        lesion_table,
        records_lesions,
        type_queries,
    )
    from medvl3d.data.preprocess import preprocess_sample
    from medvl3d.infer.lesions import (
        LesionQuery,
        LesionSegmenter,
        _match,
        _value_probs,
        query_value_probs,
    )
    from medvl3d.models.malenia import NAME_ATTRIBUTE

    seg = LesionSegmenter.from_checkpoint(run)
    model, vocab = seg.model, seg.model.vocabulary.table()
    dataset = open_split(data, "valid")
    by_name = NAME_ATTRIBUTE in vocab
    values = type_queries(lesion_table(records_lesions(dataset)), TYPE_QUERY_ATTRIBUTES).get(lesion_type)
    if values is None:
        raise SystemExit(f"{data}: the valid split records no {lesion_type!r} lesion")
    query = LesionQuery(name=lesion_type) if by_name else LesionQuery(dict(values))
    if by_name:
        seg.prepare_query(query)  # an unseen name joins the vocabulary, as at evaluation
        vocab = model.vocabulary.table()
    rows: list[dict] = []
    for i in range(len(dataset)):
        if len({r["case"] for r in rows}) >= cases:
            break
        sample = dataset[i]
        ids = [int(k) for k, les in (sample.get("lesions") or {}).items() if les["type"] == lesion_type]
        if not ids:
            continue
        prepared = preprocess_sample(sample, seg.spec)
        truth = torch.isin(torch.as_tensor(prepared["label"])[0], torch.tensor(ids))
        if not truth.any():
            continue
        centre = truth.nonzero().float().mean(0).long()
        window = tuple(
            slice(min(max(0, int(c) - 24), n - 48), min(max(0, int(c) - 24), n - 48) + 48)
            for c, n in zip(centre, truth.shape)
        )
        x = prepared["image"][(slice(None), *window)][None].float()
        t = truth[window]
        with torch.no_grad():
            out = model.eval()(x)
            masks = model.upsample(out["masks"], tuple(x.shape[2:])).sigmoid()[0] >= 0.5
            p_lesion, given = _value_probs(model, out["attr"])
            asked = query_value_probs(model, given, query)
            gate = _match(model, given, query)
        attrs = [NAME_ATTRIBUTE] if by_name else ["location", "density", "shape"]
        for n in range(masks.shape[0]):
            m = masks[n]
            top = {}
            for a in attrs:
                p = given[a][0, n]
                top[a] = [[vocab[a][int(j)], round(float(p[j]), 3)] for j in p.argsort(descending=True)[:3]]
            rows.append({
                "case": sample["meta"].get("case_id", i), "token": n,
                "dice": round(2 * float((m & t).sum()) / max(1.0, float(m.sum() + t.sum())), 3),
                "p_lesion": round(float(p_lesion[0, n]), 3), "top": top,
                # What the type's query gate reads (kept when the mean is >= 0.5 and p_lesion >= 0.5).
                "query": {k: round(float(v[0, n]), 3) for k, v in asked.items()},
                "query_mean": round(float(gate[0, n]), 3),
            })  # fmt: skip
    return rows


def _score_patched(run: Path, data: Path, name: str, patched) -> dict:
    """`evaluate_lesion_types` on the valid split with `medvl3d.infer.lesions.<name>` replaced by
    `patched(original)` meanwhile (seen types: those of the folder's train split)."""
    import medvl3d.infer.lesions as lesions
    from medvl3d.data.datasets import open_split
    from medvl3d.data.lesion_knowledge import records_lesions
    from medvl3d.eval.lesion_segmentation import evaluate_lesion_types

    original = getattr(lesions, name)
    seen = {les["type"] for les in records_lesions(open_split(data, "train"))}
    setattr(lesions, name, patched(original))
    try:
        return evaluate_lesion_types(run, data, "valid", seen=seen)
    finally:
        setattr(lesions, name, original)


def score_name_top1(run: Path, data: Path) -> dict:
    """The name-only model scored with a gentler gate: a token is kept when the queried name is its most
    probable name (the default gate asks for probability >= 0.5, which a choice among 19 names rarely
    reaches). A diagnostic of the baseline, not a setting of the library: the gate is patched here."""
    from medvl3d.models.malenia import NAME_ATTRIBUTE

    def patched(original):
        def top1(model, given, query):
            if query.name is None or query.attributes:
                return original(model, given, query)
            probs = given[NAME_ATTRIBUTE]
            return (probs.argmax(-1) == model.vocabulary.index(NAME_ATTRIBUTE, query.name)).float()

        return top1

    return _score_patched(run, data, "_match", patched)


def score_prior_balanced(run: Path, data: Path) -> dict:
    """A Malenia model scored with each attribute's value probabilities divided by the value's frequency
    among the training lesions (post-hoc logit adjustment, Laplace-smoothed counts from the checkpoint's
    lesion table): would a rare value (hyperdense: 11 of 193 training lesions) win where the token is
    torn? A diagnostic, not a setting of the library."""
    from medvl3d.models.checkpoint import read_info

    types = read_info(run).get("lesion_types") or {}
    log_prior: dict[str, torch.Tensor] = {}

    def prior(model, attr: str) -> torch.Tensor:
        if attr not in log_prior:
            values = model.vocabulary.table()[attr][:-1]
            n = torch.zeros(len(values))
            for t in types.values():
                for v, f in (t.get(attr) or {}).items():
                    if v in values:
                        n[values.index(v)] += t["count"] * f
            log_prior[attr] = ((n + 1) / (n.sum() + len(values))).log()
        return log_prior[attr]

    def patched(original):
        def balanced(model, attr_logits):
            p_lesion, _ = original(model, attr_logits)
            given = {
                a: (lg.float()[..., :-1] - prior(model, a).to(lg.device)).softmax(-1)
                for a, lg in attr_logits.items()
            }
            return p_lesion, given

        return balanced

    return _score_patched(run, data, "_value_probs", patched)


def _require_organ_head(run: Path) -> None:
    """Refuse, in one line, a run whose model has no organ head (`n_organs: 0`): nothing to bound by."""
    from medvl3d.models.checkpoint import read_info

    config = ((read_info(run).get("model") or {}).get("config")) or {}
    if not config.get("n_organs"):
        raise SystemExit(
            f"{run}: its model has no organ head (n_organs 0); --organ-gate/--organ-head need one"
        )


def score_organ_gate(run: Path, data: Path, mode: str) -> dict:
    """A Malenia model scored with each query's map bounded by the model's own organ head: `require` keeps
    the voxels it puts in the query's organ, `exclude` drops those it puts in another lesion-bearing organ
    (either region grown by one mask-feature voxel, for lesion rims). Would the organ head stop tokens
    over another organ's lesions from answering a query? A diagnostic, not a setting of the library:
    `_query_prob` is patched here."""
    import torch.nn.functional as F

    from medvl3d.data.lesion_knowledge import organ_of_location
    from medvl3d.data.synth.phantom import LESION_ORGAN_IDS

    _require_organ_head(run)

    def patched(original):
        def bounded(model, forward, query):
            prob = original(model, forward, query)
            out = forward[0]
            attrs = {} if query is None else query.attributes
            organ = attrs.get("organ") or organ_of_location(attrs.get("location"))
            if organ is None or out.get("organs") is None:
                return prob
            p = out["organs"].float().softmax(1)
            if mode == "require":
                keep = p[:, list(LESION_ORGAN_IDS[organ])].sum(1, keepdim=True)
            else:
                others = [i for o, ids in LESION_ORGAN_IDS.items() if o != organ for i in ids]
                keep = 1 - p[:, others].sum(1, keepdim=True)
            keep = F.max_pool3d(keep, 3, stride=1, padding=1)
            return prob * (model.upsample(keep, tuple(prob.shape[2:])) >= 0.5)

        return bounded

    return _score_patched(run, data, "_query_prob", patched)


def organ_head_labels(run: Path, data: Path) -> dict:
    """Per lesion type of the valid split: the share of its lesions' voxels the model's organ head puts in
    each organ (one 48^3 window centred on each lesion, as `probe`), its own organ first."""
    from collections import Counter

    from medvl3d.data.datasets import open_split
    from medvl3d.data.preprocess import preprocess_sample
    from medvl3d.data.synth.phantom import LESION_ORGAN_IDS, ORGAN_LABELS
    from medvl3d.infer.lesions import LesionSegmenter

    _require_organ_head(run)
    seg = LesionSegmenter.from_checkpoint(run)
    model = seg.model.eval()
    dataset = open_split(data, "valid")
    counts: dict[str, Counter] = {}
    organ_of: dict[str, str] = {}
    for i in range(len(dataset)):
        sample = dataset[i]
        if not sample.get("lesions"):
            continue
        prepared = preprocess_sample(sample, seg.spec)
        label = torch.as_tensor(prepared["label"])[0]
        for k, les in sample["lesions"].items():
            truth = label == int(k)
            if not truth.any():
                continue
            centre = truth.nonzero().float().mean(0).long()
            lo = [min(max(0, int(c) - 24), n - 48) for c, n in zip(centre, truth.shape)]
            window = tuple(slice(a, a + 48) for a in lo)
            with torch.no_grad():
                out = model(prepared["image"][(slice(None), *window)][None].float())
            labels = model.upsample(out["organs"].float(), (48, 48, 48))[0].argmax(0)[truth[window]]
            counts.setdefault(les["type"], Counter()).update(labels.tolist())
            organ_of[les["type"]] = les["organ"]
    result = {}
    for name, c in sorted(counts.items()):
        total = sum(c.values())
        own = sum(c[i] for i in LESION_ORGAN_IDS[organ_of[name]])
        shares = {ORGAN_LABELS.get(i, "background"): round(n / total, 3) for i, n in c.most_common()}
        result[name] = {
            "organ": organ_of[name],
            "voxels": total,
            "own_organ": round(own / total, 3),
            "labels": shares,
        }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a trained Malenia run or checkpoint")
    ap.add_argument("--data", type=Path, required=True, help="the SynthCT-VL folder (its valid split)")
    ap.add_argument("--type", help="lesion type to probe (required unless --name-top1 or --prior-balanced)")
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("-o", "--out", type=Path, default=None, help="JSON record (default: print only)")
    ap.add_argument(
        "--name-top1",
        action="store_true",
        help="instead: score a name-only run on the whole valid split with a top-1 name gate (a diagnostic)",
    )
    ap.add_argument(
        "--prior-balanced",
        action="store_true",
        help="instead: score a Malenia run on the whole valid split with its value probabilities divided by "
        "the training frequency of each value (a diagnostic)",
    )
    ap.add_argument(
        "--organ-gate",
        choices=("require", "exclude"),
        help="instead: score a Malenia run on the whole valid split with each query bounded by its organ "
        "head (a diagnostic)",
    )
    ap.add_argument(
        "--organ-head",
        action="store_true",
        help="instead: where the run's organ head puts each valid lesion type's voxels (a diagnostic)",
    )
    args = ap.parse_args()
    if not (args.type or args.name_top1 or args.prior_balanced or args.organ_gate or args.organ_head):
        ap.error("--type is required unless --name-top1, --prior-balanced, --organ-gate or --organ-head")
    commit = git_commit()
    command = " ".join(["benchmarks/malenia_token_probe.py", *sys.argv[1:]])
    if args.organ_head:
        labels = organ_head_labels(args.run, args.data)
        for name, row in labels.items():
            where = f"{row['own_organ']:.2f} of {row['voxels']} voxels in the {row['organ']}"
            print(f"{name}: {where}; {row['labels']}")
        if args.out:
            record = {"benchmark": "malenia_organ_head", "commit": commit, "command": command,
                      "run": str(args.run), "types": labels}  # fmt: skip
            atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
        return
    if args.name_top1 or args.prior_balanced or args.organ_gate:
        if args.organ_gate:
            scores, benchmark = score_organ_gate(args.run, args.data, args.organ_gate), "malenia_organ_gate"
        elif args.name_top1:
            scores, benchmark = score_name_top1(args.run, args.data), "malenia_name_top1"
        else:
            scores, benchmark = score_prior_balanced(args.run, args.data), "malenia_prior_balanced"
        print({g: scores.get(g) for g in ("seen", "unseen")})
        print({k: round(v["dice"], 3) for k, v in scores.items() if k not in ("seen", "unseen")})
        if args.out:
            gate = {"organ_gate": args.organ_gate} if args.organ_gate else {}
            record = {"benchmark": benchmark, "commit": commit, "command": command, "run": str(args.run),
                      **gate, "scores": scores}  # fmt: skip
            atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
        return
    rows = probe(args.run, args.data, args.type, args.cases)
    if not rows:
        raise SystemExit(f"{args.data}: no valid case holds a visible {args.type!r} lesion")
    for r in rows:
        tops = "; ".join(
            f"{a}: " + ", ".join(f"{v} {p:.2f}" for v, p in vals) for a, vals in r["top"].items()
        )
        asked = ", ".join(f"{k} {v:.2f}" for k, v in r["query"].items())
        print(
            f"case {r['case']} token {r['token']}: Dice {r['dice']:.2f}, p_lesion {r['p_lesion']:.2f}, "
            f"{tops}; query mean {r['query_mean']:.2f} ({asked})"
        )
    if args.out:
        record = {
            "benchmark": "malenia_token_probe", "commit": commit,
            "command": command, "run": str(args.run), "type": args.type, "tokens": rows,
        }  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
