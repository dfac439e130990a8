"""Hand-made lesion batches shared by the Malenia tests."""

from __future__ import annotations

import torch

SEPARATE, INVADING = "separate from neighbouring organs", "invading neighbouring organs"
CYST = {
    "type": "liver_cyst", "organ": "liver", "contrast": "contrast-enhanced", "location": "left lobe",
    "shape": "round-like", "density": "hypodense", "homogeneity": "homogeneous", "margin": "well-defined",
    "neighbor_relation": SEPARATE,
}  # fmt: skip
TUMOUR = {
    "type": "renal_cell_carcinoma", "organ": "kidney", "contrast": "contrast-enhanced",
    "location": "right kidney", "shape": "irregular", "density": "hyperdense", "homogeneity": "heterogeneous",
    "margin": "ill-defined", "neighbor_relation": INVADING,
}  # fmt: skip


def lesion_batch(seed: int = 0, size: int = 32) -> dict:
    """Two images with a dark round 'cyst' and a bright 'tumour' box at random places (lesion ids 1, 2) and
    an organ map (3 where the lesions are, 1 elsewhere)."""
    gen = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for _ in range(2):
        img = 0.5 + 0.03 * torch.randn(1, size, size, size, generator=gen)
        lab = torch.zeros(2, size, size, size, dtype=torch.long)
        lab[1] = 1
        c = torch.randint(6, size // 2 - 4, (3,), generator=gen)
        grid = torch.stack(torch.meshgrid(*[torch.arange(size)] * 3, indexing="ij"))
        ball = ((grid - c[:, None, None, None]) ** 2).sum(0) < 16
        img[0][ball] = 0.15
        lab[0][ball], lab[1][ball] = 1, 3
        lo = torch.randint(size // 2 + 1, size - 8, (3,), generator=gen)
        box = tuple(slice(int(a), int(a) + 6) for a in lo)
        img[0][box] = 0.9
        lab[0][box], lab[1][box] = 2, 3
        images.append(img)
        labels.append(lab)
    return {
        "image": torch.stack(images),
        "label": torch.stack(labels),
        "lesions": [{1: dict(CYST), 2: dict(TUMOUR)} for _ in range(2)],
    }
