"""Report labeller vs the sentence-similarity baseline on the 800 real CT-RATE reports with manual labels.

Usage: python benchmarks/bench_labeller.py [--csv ../shared/data/real/ctrate_reports/train.csv] [--folds 5]
                                           [--no-baseline]

Prints one table, per label and macro, AUROC and F1 (at 0.5) for:
* ``minilm-sent``: all-MiniLM-L6-v2 (mean pooling, L2 norm), per sentence softmax over the cosine to
  "X" vs "no X", report score = max over sentences (the baseline the issue cites, ~0.90 macro AUROC);
* ``minilm-report``: the same scored on the whole report at once (windowed past 128 tokens);
* ``rules``: ``ReportLabeller()`` as shipped (nothing fitted on these reports);
* ``rules+LR (cv)``: the per-label logistic calibration, k-fold cross-validated (fit on k-1 folds,
  scored on the held-out fold), the honest estimate for unseen reports.
and the labeller's throughput.

``report_text`` has no section headers (findings and impression are joined by a quote character), so
every mention counts as findings here and the impression weighting is not exercised. The CT-RATE loader
joins its two columns with ``join_report`` (FINDINGS:/IMPRESSION: headers); on the 192 reports whose
single quote marks that boundary, re-joining them so moves the rules' macro AUROC by 0.0001.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch

from medvl3d.schema import CTRATE_LABELS
from medvl3d.text.labeller import ReportLabeller, cross_validate, evaluate_labeller, format_table
from medvl3d.text.reports import split_sentences

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CSV = REPO.parent / "shared" / "data" / "real" / "ctrate_reports" / "train.csv"
TAU = 0.05  # softmax temperature; AUROC and F1@0.5 do not depend on it (max of a monotone map)


def read_reports(path: Path) -> tuple[list[str], np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: reports CSV not found")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    missing = [c for c in ("report_text", *CTRATE_LABELS) if c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    return [r["report_text"] for r in rows], np.array([[int(r[k]) for k in CTRATE_LABELS] for r in rows])


def minilm_baseline(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Sentence-max and whole-report probabilities [N, 18] from the off-the-shelf MiniLM encoder."""
    from medvl3d.text.encoders import build_text_encoder

    torch.set_grad_enabled(False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    enc = build_text_encoder("all-MiniLM-L6-v2", max_length=128, cache_size=0, device=device)
    names = [lab.lower() for lab in CTRATE_LABELS]
    prompts = enc.encode(names + [f"no {n}" for n in names], batch_size=64)
    pos, neg = prompts[:18], prompts[18:]

    def probs(emb: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([emb @ pos.T, emb @ neg.T], dim=-1) / TAU
        return logits.softmax(-1)[..., 0].cpu()

    sentences = [split_sentences(t) or [t] for t in texts]
    flat = [s for sents in sentences for s in sents]
    sent_p = probs(enc.encode(flat, batch_size=64, progress=True))
    out_sent, i = np.zeros((len(texts), 18)), 0
    for j, sents in enumerate(sentences):
        out_sent[j] = sent_p[i : i + len(sents)].max(0).values.numpy()
        i += len(sents)
    out_report = probs(enc.encode(texts, batch_size=16, progress=True)).numpy()
    return out_sent, out_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--no-baseline", action="store_true", help="skip the MiniLM baseline (slow on CPU)")
    args = ap.parse_args()
    texts, y = read_reports(args.csv)

    labeller = ReportLabeller()
    t0 = time.perf_counter()
    feats = labeller.features_many(texts, progress=False)
    seconds = time.perf_counter() - t0
    tables = {}
    if not args.no_baseline:
        t1 = time.perf_counter()
        sent, whole = minilm_baseline(texts)
        base_seconds = time.perf_counter() - t1
        tables["minilm-sent"] = evaluate_labeller(None, y, probs=sent)
        tables["minilm-report"] = evaluate_labeller(None, y, probs=whole)
    tables["rules"] = evaluate_labeller(None, y, probs=labeller.proba_from_features(feats))
    cv = cross_validate(texts, y, k=args.folds, seed=0, features=feats)
    tables[f"rules+LR {args.folds}-fold cv"] = evaluate_labeller(None, y, probs=cv)

    print(f"{len(texts)} reports from {args.csv}")
    print(format_table(tables))
    rate = len(texts) / seconds
    print(f"\nrule labeller: {rate:.0f} reports/s ({seconds:.2f} s for {len(texts)}, one CPU process)")
    if not args.no_baseline:
        threads = torch.get_num_threads()
        where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{threads} CPU threads"
        print(f"MiniLM baseline: {base_seconds:.1f} s for {len(texts)} reports on {where}")


if __name__ == "__main__":
    main()
