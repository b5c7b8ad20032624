"""The packed artifact: what `size_mb` measures and what `load_model` rebuilds the model from.

Layout: ``MAGIC | u32 manifest length | manifest JSON | blobs``. The manifest holds the model's
architecture and task metadata (e.g. the vocabulary) and, per tensor, how it is stored:

- ``float32`` / ``float16``: raw little-endian values (16 bits: the `bits = 16` setting);
- ``quant``: b-bit level indices packed densely (eight 3-bit values in three bytes), plus a scale per
  group (float16 when every scale of the tensor is one, as `quantize.storable` makes them; else float32)
  and, for affine quantization, a b-bit zero point per group (symmetric: fixed);
- ``codebook``: b-bit indices packed densely, plus the float16 centroids of each tensor, row or group;
- ``tied_to``: the same tensor as an earlier entry (a tied LM head), stored once;
- any of these, sparse: values for kept entries only, located by a packed bitmask (1 bit per weight) or
  by their flat indices (uint16/uint32), whichever is smaller.

With `entropy="zstd"` every blob is also compressed with Zstandard (`zstd_level`) where that makes it
smaller (its reference then says so); level indices are coded one byte per index, unpacked, when that
codes smaller, since the coder's Huffman stage sees whole symbols then. Decoding is lossless: reloads
stay bit-exact.

The manifest names the model (`models.describe`: a registered architecture and its config, or a task's
own description) and also lists the Linear layers that run on int8 kernels (`quantize.to_int8_kernels`).
Reloading applies the same `dequantize` and kernel swap as the in-memory model, so outputs are
bit-identical.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zstandard
from torch import nn

from orchestrator import models
from orchestrator.stages.quantize import CodebookTensor, QuantizedTensor, dequantize, to_int8_kernels, zero_levels

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


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned integers < 2^bits densely, `bits` bits each, little-endian bit order."""
    v = np.ascontiguousarray(values, dtype=np.uint8).reshape(-1, 1)
    planes = np.unpackbits(v, axis=1, bitorder="little")[:, :bits]  # (n, bits)
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_bits(buf: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits` for `count` values."""
    planes = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), bitorder="little")[: count * bits]
    planes = np.pad(planes.reshape(count, bits), ((0, 0), (0, 8 - bits)))
    return np.packbits(planes, axis=1, bitorder="little").reshape(count)


def export(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    float16: bool = False,
    masks: dict[str, torch.Tensor] | None = None,
    quantized: dict[str, QuantizedTensor] | None = None,
    meta: dict[str, Any] | None = None,
    int8_layers: list[str] | None = None,
    entropy: str = "none",
) -> int:
    """Write `model` in packed form to `path` (atomically) and return the file's size in bytes.

    Args:
        model: the compressed model as it runs (pruned entries zero, weights already quantized).
        float16: store the float matrices that are not in `quantized` as float16 (`bits` 16).
        masks: keep-masks from pruning, by parameter name.
        quantized: integer weights from `quantize_`, by parameter name.
        meta: JSON-able task metadata stored with the model (e.g. ``{"vocab": "..."}``).
        int8_layers: Linear layers the model runs on int8 kernels (their weights must be in `quantized`).
            `model` is the float form, before `to_int8_kernels`.
        entropy: "zstd" entropy-codes every blob where that saves bytes (see the module docstring).
    """
    if entropy not in ENTROPY:
        raise ValueError(f"entropy must be one of {ENTROPY}, got {entropy!r}")
    masks, quantized = masks or {}, quantized or {}
    description = models.describe(model)
    blobs: list[bytes] = []
    offset = 0
    coders: dict[int, Any] = {}
    spent = 0  # bytes coded at the slow level so far

    def add(data: bytes, *alternatives: tuple[str, bytes], floats: bool = False) -> list[Any]:
        """Store a blob (`floats`: of float values); `alternatives` are (layout, bytes) other forms of it to
        try under the coder. The reference is [offset, length] or, coded, [offset, length, "zstd", raw
        length(, layout)]."""
        nonlocal offset, spent
        stored, ref_tail = data, []
        if entropy == "zstd":
            for layout, raw in (("", data), *alternatives):
                level = zstd_level(len(raw), floats, spent)
                spent += len(raw) if level == 19 else 0
                coder = coders.setdefault(level, zstandard.ZstdCompressor(level=level))
                coded = coder.compress(raw)
                if len(coded) < len(stored):
                    stored, ref_tail = coded, ["zstd", len(raw), *([layout] if layout else [])]
        blobs.append(stored)
        ref = [offset, len(stored), *ref_tail]
        offset += len(stored)
        return ref

    # Tied weights (an LM head sharing the token embedding) are one tensor: stored once, under the name
    # that holds its quantized form or mask, and the other names point at it.
    state = model.state_dict()
    groups: dict[int, list[str]] = {}
    for name, tensor in state.items():
        if tensor.numel():
            groups.setdefault(tensor.data_ptr(), []).append(name)
    stored_as = {}
    for names in groups.values():
        best = next((n for n in names if n in quantized), next((n for n in names if n in masks), names[0]))
        stored_as.update({n: best for n in names})
    order = []
    for name in state:
        canonical = stored_as.get(name, name)
        order.extend(n for n in (canonical, name) if n not in order)
    entries = []
    for name in order:
        t = state[name].detach().cpu()
        entry: dict[str, Any] = {"name": name, "shape": list(t.shape)}
        if stored_as.get(name, name) != name:
            entries.append({**entry, "tied_to": stored_as[name]})
            continue
        mask = masks.get(name)
        kept = slice(None)
        if mask is not None:
            flat = mask.numpy().reshape(-1)
            kept = np.flatnonzero(flat)
            index_dtype = "<u2" if flat.size <= 2**16 else "<u4"
            bitmask = np.packbits(flat, bitorder="little").tobytes()
            indices = kept.astype(index_dtype).tobytes()
            if len(indices) < len(bitmask):
                entry["index"] = add(indices)
                entry["index_dtype"] = index_dtype
            else:
                entry["mask"] = add(bitmask)
        if name in quantized and isinstance(quantized[name], CodebookTensor):
            ct = quantized[name]
            indices = ct.q.numpy().reshape(-1)[kept]
            entry.update(
                encoding="codebook", bits=ct.bits, granularity=ct.granularity, group_size=ct.group_size,
                values=add(pack_bits(indices, ct.bits), ("bytes", indices.astype(np.uint8).tobytes())),
                centroids=add(ct.centroids.numpy().astype("<f2").tobytes(), floats=True), centroid_shape=list(ct.centroids.shape),
            )
        elif name in quantized:
            qt = quantized[name]
            levels = qt.q.numpy().reshape(-1)[kept]
            scale_dtype = "<f2" if torch.equal(qt.scale, qt.scale.half().float()) else "<f4"
            entry.update(
                encoding="quant",
                bits=qt.bits,
                granularity=qt.granularity,
                group_size=qt.group_size,
                values=add(pack_bits(levels, qt.bits), ("bytes", levels.astype(np.uint8).tobytes())),
                scale=add(qt.scale.numpy().astype(scale_dtype).tobytes(), floats=True),
                scale_shape=list(qt.scale.shape), scale_dtype=scale_dtype,
            )
            if qt.symmetric:
                entry["zero_point"] = 2 ** (qt.bits - 1)
            else:
                entry["zero_points"] = add(pack_bits(qt.zero_point.numpy().reshape(-1), qt.bits))
        else:
            is_matrix = t.dim() == 2
            dtype = "<f2" if float16 and is_matrix else "<f4"
            values = t.numpy().reshape(-1)[kept]
            entry.update(encoding="float16" if dtype == "<f2" else "float32", values=add(values.astype(dtype).tobytes(), floats=True))
        entries.append(entry)

    manifest = {
        "format": FORMAT,
        "architecture": description["architecture"],
        "config": description["config"],
        "meta": meta or {},
        "int8_layers": list(int8_layers or []),
        "tensors": entries,
    }
    head = json.dumps(manifest, separators=(",", ":")).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<I", len(head)) + head)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)
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


def load_artifact(
    path: str | os.PathLike[str], build: Callable[[dict[str, Any]], nn.Module] = models.build
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the compressed model stored by `export`; returns (model in eval mode, task metadata).
    `build` makes the empty model from its description (a task's `build_model` for a model of its own)."""
    manifest, blobs = _split(path)
    model = build({"architecture": manifest["architecture"], "config": manifest["config"]})

    decoder = zstandard.ZstdDecompressor()

    def blob(ref: list[Any]) -> bytes:
        data = bytes(blobs[ref[0] : ref[0] + ref[1]])
        return decoder.decompress(data, max_output_size=ref[3]) if len(ref) > 2 and ref[2] == "zstd" else data

    def levels(ref: list[Any], bits: int, count: int) -> np.ndarray:
        """Level or centroid indices: packed `bits` each, or (an entropy-coded layout) one byte each."""
        if len(ref) > 4 and ref[4] == "bytes":
            return np.frombuffer(blob(ref), dtype=np.uint8)[:count]
        return unpack_bits(blob(ref), bits, count)

    state, quantized = {}, {}
    for e in manifest["tensors"]:
        if "tied_to" in e:
            state[e["name"]] = state[e["tied_to"]]
            continue
        shape, numel = e["shape"], int(np.prod(e["shape"], dtype=np.int64))
        mask = None
        if "mask" in e:
            bits_ = np.unpackbits(np.frombuffer(blob(e["mask"]), dtype=np.uint8), bitorder="little")[:numel]
            mask = torch.from_numpy(bits_.astype(bool)).view(shape)
        elif "index" in e:
            flat = np.zeros(numel, dtype=bool)
            flat[np.frombuffer(blob(e["index"]), dtype=e["index_dtype"])] = True
            mask = torch.from_numpy(flat).view(shape)
        where = mask.numpy().reshape(-1) if mask is not None else slice(None)
        kept = numel if mask is None else int(mask.sum())
        if e["encoding"] == "codebook":
            q = np.zeros(numel, dtype=np.uint8)
            q[where] = levels(e["values"], e["bits"], kept)
            centroids = np.frombuffer(blob(e["centroids"]), dtype="<f2").astype(np.float32)
            ct = CodebookTensor(q=torch.from_numpy(q).view(shape), centroids=torch.from_numpy(centroids).view(e["centroid_shape"]),
                                bits=e["bits"], granularity=e["granularity"], group_size=e["group_size"])
            quantized[e["name"]] = ct
            state[e["name"]] = dequantize(ct, mask)
        elif e["encoding"] == "quant":
            bits = e["bits"]
            q = np.zeros(numel, dtype=np.uint8)
            q[where] = levels(e["values"], bits, kept)
            scale_values = np.frombuffer(blob(e["scale"]), dtype=e.get("scale_dtype", "<f4")).astype(np.float32)
            scale = torch.from_numpy(scale_values).view(e["scale_shape"])
            groups = scale.numel()
            if "zero_points" in e:
                zp = torch.from_numpy(unpack_bits(blob(e["zero_points"]), bits, groups)).view(e["scale_shape"])
            else:
                zp = torch.full(e["scale_shape"], e["zero_point"], dtype=torch.uint8)
            qt = QuantizedTensor(
                q=torch.from_numpy(q).view(shape), scale=scale, zero_point=zp, bits=bits,
                granularity=e["granularity"], group_size=e["group_size"], symmetric="zero_points" not in e,
            )
            if mask is not None:  # a pruned weight's level is its zero point (what int8 kernels read)
                qt.q[~mask] = zero_levels(qt)[~mask]
            quantized[e["name"]] = qt
            state[e["name"]] = dequantize(qt, mask)
        else:
            dtype = "<f2" if e["encoding"] == "float16" else "<f4"
            values = np.frombuffer(blob(e["values"]), dtype=dtype).astype(np.float32)
            full = np.zeros(numel, dtype=np.float32)
            full[where] = values
            state[e["name"]] = torch.from_numpy(full).view(shape)
    model.load_state_dict(state)
    int8 = manifest.get("int8_layers", [])
    if int8:
        to_int8_kernels(model, quantized, int8)
    return model.eval(), manifest["meta"]
