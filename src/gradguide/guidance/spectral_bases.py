"""The cached spectral bases of a run: ``RUN_DIR/spectral_bases.safetensors`` and its key.

The Laplacian eigendecompositions of a run's parameter graphs are built once and written with a
key (sha256 of the graph options, the matrix names and the base weights); a resumed run reloads
them only when the key and the names match.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gradguide.errors import GradguideError
from gradguide.guidance.graphs import Graph

BASES_FILE = "spectral_bases.safetensors"
BASES_FORMAT = "1"


def bases_key(
    graph_options: dict[str, Any], method: str, matrices: Sequence[tuple[str, torch.Tensor]]
) -> str:
    """sha256 of what the graphs depend on: graph options, matrix names and the base weights.

    ``matrices`` are (name, pretrained weight whose rows are the nodes) in the run's order.
    """
    h = hashlib.sha256()
    head = {"format": BASES_FORMAT, "method": method, **graph_options}
    h.update(json.dumps(head, sort_keys=True).encode())
    for name, rows in matrices:
        h.update(json.dumps([name, list(rows.shape)]).encode())
        h.update(rows.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def save_bases(
    path: Path, key: str, names: list[str], graphs: list[Graph], times: list[float]
) -> None:
    """Write the graphs atomically to ``path`` with their key, matrix names and build times."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for i, g in enumerate(graphs):
        tensors.update(g.tensors(str(i)))
    meta = {"format": BASES_FORMAT, "key": key, "names": json.dumps(names)}
    meta["build_s"] = json.dumps(times)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_bases(
    path: Path, key: str, names: list[str], laplacian: str
) -> tuple[list[Graph], list[float]]:
    """The graphs cached at ``path`` and their build times; GradguideError if the key differs."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise GradguideError(f"cannot read the cached spectral bases: {e}", file=path) from None
    if meta.get("key") != key or json.loads(meta.get("names", "[]")) != names:
        raise GradguideError(
            "the cached spectral bases were built from other base weights or graph options "
            "than this run's; delete the file to rebuild them",
            file=path,
        )
    graphs = [Graph.from_tensors(tensors, str(i), laplacian) for i in range(len(names))]
    return graphs, [float(t) for t in json.loads(meta.get("build_s", "[]"))]
