"""The packed artifact (`model.orc`): what `size_mb` measures and what `load_model` rebuilds the model from.

Layout: ``MAGIC | u32 manifest length | manifest JSON | blobs``. The manifest holds the model's
architecture and task metadata (e.g. the vocabulary) and, per tensor, how it is stored:

- ``float32`` / ``float16``: raw little-endian values (16 bits: the `bits = 16` setting);
- an integer form a technique gave it (`techniques.quantize.EncodedTensor`): ``quant`` (b-bit levels packed
  densely, a scale per group and, affine, a b-bit zero point per group), ``codebook`` (b-bit indices and
  float16 centroids), or any encoding a technique of your own registers; the technique writes and reads
  its own fields and blobs;
- ``tied_to``: the same tensor as an earlier entry (a tied LM head), stored once;
- any of these, sparse: values for kept entries only, located by a packed bitmask (1 bit per weight) or by
  their flat indices (uint16/uint32), whichever is smaller.

With `entropy="zstd"` every blob is also compressed with Zstandard (`zstd_level`) where that makes it
smaller (its reference then says so); level indices are coded one byte per index, unpacked, when that
codes smaller, since the coder's Huffman stage sees whole symbols then. Decoding is lossless: reloads stay
bit-exact. The manifest also lists the Linear layers that run on int8 kernels; reloading applies the same
`dequantize` and kernel swap as the in-memory model, so outputs are bit-identical.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zstandard
from torch import nn

from orchestrator.core.bits import unpack_bits
from orchestrator.io.files import replaced
from orchestrator.models.registry import build as build_registered
from orchestrator.models.registry import describe
from orchestrator.techniques.allocation import stored_bits
from orchestrator.techniques.int8 import to_int8_kernels
from orchestrator.techniques.quantize import ENCODINGS, EncodedTensor

ARTIFACT = "model.orc"  # a model's packed artifact, by name, wherever the product keeps one
MAGIC = b"ORCHPK03"
READABLE = (b"ORCHPK02", MAGIC)  # format 2 had no entropy coding and no codebooks: it reads the same
FORMAT = "orchestrator.packed/3"
ENTROPY = ("none", "zstd")
SLOW_CODING_BYTES = 4_000_000  # per model: what level 19 may code (about 1.3 s per MB on one core)


def zstd_level(size: int, floats: bool, spent: int = 0) -> int:
    """Zstandard's effort for one blob: float values code no smaller above level 3 (their exponent bytes
    are what repeats), so they take the fast level; indices and masks gain from level 19 (its Huffman
    stage models them best) while the model's blobs coded at 19 so far (`spent` bytes) and this one stay
    within `SLOW_CODING_BYTES`, and take level 9 beyond: a 135M-parameter model's 8-bit indices at 19
    took 47 s to export, at 9 about one."""
    return 3 if floats else 19 if spent + size <= SLOW_CODING_BYTES else 9


class _Blobs:
    """The blobs of an artifact being written (`techniques.quantize.BlobStore`): each stored as it is or, with
    zstd, as the smallest coded form of it and its alternatives. A reference is [offset, length] or, coded,
    [offset, length, "zstd", raw length(, layout)]."""

    def __init__(self, entropy: str) -> None:
        self.entropy, self.blobs, self.offset, self.spent = entropy, [], 0, 0  # spent: bytes coded at the slow level
        self.coders: dict[int, Any] = {}

    def add(self, data: bytes, *alternatives: tuple[str, bytes], floats: bool = False) -> list[Any]:
        stored, ref_tail = data, []
        if self.entropy == "zstd":
            for layout, raw in (("", data), *alternatives):
                level = zstd_level(len(raw), floats, self.spent)
                self.spent += len(raw) if level == 19 else 0
                coded = self.coders.setdefault(level, zstandard.ZstdCompressor(level=level)).compress(raw)
                if len(coded) < len(stored):
                    stored, ref_tail = coded, ["zstd", len(raw), *([layout] if layout else [])]
        self.blobs.append(stored)
        ref = [self.offset, len(stored), *ref_tail]
        self.offset += len(stored)
        return ref


class _Reader:
    """An artifact's blobs, read back (`techniques.quantize.BlobLoad`)."""

    def __init__(self, blobs: memoryview) -> None:
        self.blobs, self.decoder = blobs, zstandard.ZstdDecompressor()

    def blob(self, ref: list[Any]) -> bytes:
        data = bytes(self.blobs[ref[0] : ref[0] + ref[1]])
        return self.decoder.decompress(data, max_output_size=ref[3]) if len(ref) > 2 and ref[2] == "zstd" else data

    def levels(self, ref: list[Any], bits: int, count: int) -> np.ndarray:
        """Level or centroid indices: packed `bits` each, or (an entropy-coded layout) one byte each."""
        if len(ref) > 4 and ref[4] == "bytes":
            return np.frombuffer(self.blob(ref), dtype=np.uint8)[:count]
        return unpack_bits(self.blob(ref), bits, count)


def _stored_as(state: Mapping[str, torch.Tensor], quantized: Mapping[str, EncodedTensor],
               masks: Mapping[str, torch.Tensor]) -> tuple[list[str], dict[str, str]]:
    """(the order tensors are written in, name -> the name its tensor is stored under). Tied weights (an LM head
    sharing the token embedding) are one tensor: stored once, under the name that holds its integer form or
    mask, and the other names point at it."""
    groups: dict[int, list[str]] = {}
    for name, tensor in state.items():
        if tensor.numel():
            groups.setdefault(tensor.data_ptr(), []).append(name)
    stored_as = {}
    for names in groups.values():
        best = next((n for n in names if n in quantized), next((n for n in names if n in masks), names[0]))
        stored_as.update({n: best for n in names})
    order: list[str] = []
    for name in state:
        order.extend(n for n in (stored_as.get(name, name), name) if n not in order)
    return order, stored_as


def _entry(name: str, t: torch.Tensor, blobs: _Blobs, *, mask: torch.Tensor | None, encoded: EncodedTensor | None,
           float16: bool) -> dict[str, Any]:
    """One tensor's manifest entry, its blobs added: the mask (or kept indices) first, then its values."""
    entry: dict[str, Any] = {"name": name, "shape": list(t.shape)}
    kept: Any = slice(None)
    if mask is not None:
        flat = mask.numpy().reshape(-1)
        kept = np.flatnonzero(flat)
        index_dtype = "<u2" if flat.size <= 2**16 else "<u4"
        bitmask, indices = np.packbits(flat, bitorder="little").tobytes(), kept.astype(index_dtype).tobytes()
        if len(indices) < len(bitmask):
            entry.update(index=blobs.add(indices), index_dtype=index_dtype)
        else:
            entry["mask"] = blobs.add(bitmask)
    if encoded is not None:
        return {**entry, **encoded.encode(blobs, kept)}
    dtype = "<f2" if float16 and t.dim() == 2 else "<f4"
    values = t.numpy().reshape(-1)[kept]
    return {**entry, "encoding": "float16" if dtype == "<f2" else "float32",
            "values": blobs.add(values.astype(dtype).tobytes(), floats=True)}


def export(
    model: nn.Module, path: str | os.PathLike[str], *, float16: bool | Collection[str] = False,
    masks: Mapping[str, torch.Tensor] | None = None, quantized: Mapping[str, EncodedTensor] | None = None,
    meta: Mapping[str, Any] | None = None, int8_layers: list[str] | None = None, entropy: str = "none",
    allocation: Mapping[str, Any] | None = None,
) -> int:
    """Write `model` in packed form to `path` (atomically) and return the file's size in bytes.

    Args:
        model: the compressed model as it runs (pruned entries zero, weights already quantized).
        float16: store the float matrices that are not in `quantized` as float16 (`bits` 16), or (a collection)
            those named (a mixed allocation's 16-bit tensors).
        masks: keep-masks from pruning, by parameter name.
        quantized: integer forms of weights (`QuantizeMethod.quantize`), by parameter name.
        meta: JSON-able task metadata stored with the model (e.g. ``{"vocab": "..."}``).
        int8_layers: Linear layers the model runs on int8 kernels (their weights must be in `quantized`).
            `model` is the float form, before `to_int8_kernels`.
        entropy: "zstd" entropy-codes every blob where that saves bytes (see the module docstring).
        allocation: a mixed-precision model's allocation table (`techniques.allocation.Allocation.to_json`),
            kept in the manifest.
    """
    if entropy not in ENTROPY:
        raise ValueError(f"entropy must be one of {ENTROPY}, got {entropy!r}")
    masks, quantized = masks or {}, quantized or {}
    state, blobs = model.state_dict(), _Blobs(entropy)
    order, stored_as = _stored_as(state, quantized, masks)
    entries = []
    for name in order:
        if stored_as.get(name, name) != name:
            entries.append({"name": name, "shape": list(state[name].shape), "tied_to": stored_as[name]})
        else:
            half = float16 if isinstance(float16, bool) else name in float16
            entries.append(_entry(name, state[name].detach().cpu(), blobs, mask=masks.get(name), encoded=quantized.get(name),
                                  float16=half))
    description = describe(model)
    manifest = {"format": FORMAT, "architecture": description["architecture"], "config": description["config"],
                "meta": dict(meta or {}), "int8_layers": list(int8_layers or []), "tensors": entries,
                **({"allocation": dict(allocation)} if allocation else {})}
    head = json.dumps(manifest, separators=(",", ":")).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced(path) as tmp, open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<I", len(head)) + head)
        for blob in blobs.blobs:
            f.write(blob)
    return path.stat().st_size


def _split(path: str | os.PathLike[str]) -> tuple[dict[str, Any], memoryview]:
    data = Path(path).read_bytes()
    if data[: len(MAGIC)] not in READABLE:
        old = data[: len(MAGIC) - 2] == MAGIC[:-2]
        raise ValueError(f"{path}: " + ("an artifact of an older orchestrator format; export it again with this version"
                                         if old else "not an orchestrator packed artifact (bad magic bytes)"))
    (n,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    return json.loads(data[start : start + n]), memoryview(data)[start + n :]


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The artifact's manifest: architecture, config, metadata, and how each tensor is stored."""
    return _split(path)[0]


def _mask(entry: Mapping[str, Any], reader: _Reader) -> torch.Tensor | None:
    shape, numel = entry["shape"], int(np.prod(entry["shape"], dtype=np.int64))
    if "mask" in entry:
        bits = np.unpackbits(np.frombuffer(reader.blob(entry["mask"]), dtype=np.uint8), bitorder="little")[:numel]
        return torch.from_numpy(bits.astype(bool)).view(shape)
    if "index" in entry:
        flat = np.zeros(numel, dtype=bool)
        flat[np.frombuffer(reader.blob(entry["index"]), dtype=entry["index_dtype"])] = True
        return torch.from_numpy(flat).view(shape)
    return None


def _floats(entry: Mapping[str, Any], reader: _Reader, mask: torch.Tensor | None) -> torch.Tensor:
    dtype = "<f2" if entry["encoding"] == "float16" else "<f4"
    full = np.zeros(int(np.prod(entry["shape"], dtype=np.int64)), dtype=np.float32)
    full[mask.numpy().reshape(-1) if mask is not None else slice(None)] = np.frombuffer(reader.blob(entry["values"]), dtype=dtype)
    return torch.from_numpy(full).view(entry["shape"])


def load_encoded(
    path: str | os.PathLike[str], build: Callable[[dict[str, Any]], nn.Module] = build_registered,
    encodings: Mapping[str, type[EncodedTensor]] | None = None,
) -> tuple[nn.Module, dict[str, Any], dict[str, EncodedTensor]]:
    """The model stored by `export` with every weight in float (its integer forms dequantized, no int8 kernel
    swapped in), its manifest, and the integer forms by parameter name: what an exporter to another runtime
    (`runtimes`) rewrites onto that runtime's kernels."""
    encodings = ENCODINGS if encodings is None else encodings
    manifest, blobs = _split(path)
    model = build({"architecture": manifest["architecture"], "config": manifest["config"]})
    reader = _Reader(blobs)
    state: dict[str, torch.Tensor] = {}
    quantized: dict[str, EncodedTensor] = {}
    for entry in manifest["tensors"]:
        if "tied_to" in entry:
            state[entry["name"]] = state[entry["tied_to"]]
            continue
        mask = _mask(entry, reader)
        if entry["encoding"] in ("float32", "float16"):
            state[entry["name"]] = _floats(entry, reader, mask)
            continue
        if entry["encoding"] not in encodings:
            raise ValueError(f"{path}: tensor {entry['name']} is stored as {entry['encoding']!r}, which no registered technique "
                             "decodes; import the module that registers it")
        quantized[entry["name"]] = encoded = encodings[entry["encoding"]].decode(entry, reader, mask)
        state[entry["name"]] = encoded.dequantize(mask)
    model.load_state_dict(state)
    return model.eval(), manifest, quantized


def load_artifact(
    path: str | os.PathLike[str], build: Callable[[dict[str, Any]], nn.Module] = build_registered,
    encodings: Mapping[str, type[EncodedTensor]] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the compressed model stored by `export`; returns (model in eval mode, task metadata).
    `build` makes the empty model from its description (a task's `build_model` for a model of its own);
    `encodings` decode the integer forms (default: those registered in this process; a sweep's workers get
    its driver's, `engine.context.SweepContext.encodings`)."""
    model, manifest, quantized = load_encoded(path, build, encodings)
    if manifest.get("int8_layers"):
        to_int8_kernels(model, quantized, manifest["int8_layers"])
    return model.eval(), manifest["meta"]


def effective_bits(path: str | os.PathLike[str], names: Collection[str],
                   encodings: Mapping[str, type[EncodedTensor]] | None = None) -> float:
    """Bits per weight of the tensors `names` as the artifact stores them before entropy coding: every weight's
    level (a pruned one too), scales, zero points and centroids, as each tensor's encoding writes them (read back
    and encoded again); 16 or 32 per weight for float tensors. A tied name counts once."""
    encodings = ENCODINGS if encodings is None else encodings
    manifest, blobs = _split(path)
    reader = _Reader(blobs)
    entries = {e["name"]: e for e in manifest["tensors"]}
    total = weights = 0
    for name in sorted({entries[n].get("tied_to", n) for n in names}):
        entry = entries[name]
        numel = int(np.prod(entry["shape"], dtype=np.int64))
        weights += numel
        if entry["encoding"] in ("float32", "float16"):
            total += numel * (16 if entry["encoding"] == "float16" else 32)
        else:
            total += stored_bits(encodings[entry["encoding"]].decode(entry, reader, _mask(entry, reader)))
    return total / max(1, weights)
