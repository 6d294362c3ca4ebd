"""Parameter graphs: the rows of a weight matrix as nodes, their Laplacian and its eigenbasis.

For a pretrained matrix W₀ (out × in) the nodes are its rows (output units). Edge weights come
from the similarity of the pretrained rows:

* ``cosine``: w_ij = max(0, cos(W₀[i], W₀[j])) (negative similarities are no edge);
* ``gaussian``: w_ij = exp(−‖W₀[i] − W₀[j]‖² / (2σ²)) with the self-tuning bandwidth σ = the
  median over nodes of the distance to their k-th nearest neighbour (scale-free: multiplying W₀ by
  a constant leaves the graph unchanged).

Each node keeps its ``knn`` most similar other nodes (ties broken by index); the directed kNN
weights A are symmetrised as W = max(A, Aᵀ) (an edge if either end chose it) or W = (A + Aᵀ)/2.
The diagonal is zero. Laplacians:

* ``combinatorial``: L = D − W;
* ``normalised``: L = I − D^{-1/2} W D^{-1/2}, with L_ii = 0 for an isolated node (Chung's
  convention, so that every connected component, isolated nodes included, has one zero
  eigenvalue). Its spectrum lies in [0, 2] whatever the scale of the weights.

Convention for the quadratic form: with the sum over *ordered* pairs,
tr(Xᵀ L X) = ½ Σ_ij w_ij ‖x_i − x_j‖² = Σ_{i<j} w_ij ‖x_i − x_j‖² (combinatorial), and the same
with x_i / √d_i for the normalised Laplacian. :class:`Graph` evaluates it on its edge list (cost
proportional to the number of edges), never with a dense L.

The eigendecomposition L = U Λ Uᵀ is done once, in float64 (``torch.linalg.eigh``), and stored in
float32 (or the dtype asked for); eigenvalues ascend, so "low frequency" means low index.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from gradguide.errors import GradguideError

SIMILARITIES = ("cosine", "gaussian")
SYMMETRISE = ("max", "mean")
LAPLACIANS = ("normalised", "combinatorial")


def knn_adjacency(rows: torch.Tensor, knn: int, similarity: str, symmetrise: str) -> torch.Tensor:
    """Symmetric, non-negative kNN adjacency (float64, zero diagonal) of the rows of ``rows``."""
    if similarity not in SIMILARITIES:
        raise GradguideError(f"unknown similarity {similarity!r}; known: {', '.join(SIMILARITIES)}")
    if symmetrise not in SYMMETRISE:
        raise GradguideError(f"unknown symmetrisation {symmetrise!r}; known: max, mean")
    x = rows.detach().to(torch.float64).cpu()
    n = x.shape[0]
    k = min(knn, n - 1)
    if k < 1:
        return torch.zeros(n, n, dtype=torch.float64)
    if similarity == "cosine":
        unit = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        score = unit @ unit.T
    else:
        sq = (x * x).sum(1)
        score = -(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)  # −distance²
    score.fill_diagonal_(float("-inf"))
    top, idx = torch.topk(score, k, dim=1, sorted=True)
    if similarity == "cosine":
        values = top.clamp_min(0.0)
    else:
        kth = (-top[:, -1]).sqrt()  # distance to the k-th neighbour
        sigma = float(kth.median())
        if sigma <= 0.0:  # more than half of the rows have k exact duplicates
            sigma = float(kth.max()) or 1.0
        values = torch.exp(top / (2.0 * sigma * sigma))
    directed = torch.zeros(n, n, dtype=torch.float64)
    directed.scatter_(1, idx, values)
    if symmetrise == "max":
        return torch.maximum(directed, directed.T)
    return 0.5 * (directed + directed.T)


def laplacian_matrix(adjacency: torch.Tensor, kind: str) -> torch.Tensor:
    """The dense Laplacian of a symmetric adjacency (``combinatorial`` or ``normalised``)."""
    degree = adjacency.sum(1)
    if kind == "combinatorial":
        return torch.diag(degree) - adjacency
    if kind == "normalised":
        s = _inverse_sqrt(degree)
        return torch.diag((degree > 0).to(adjacency.dtype)) - s[:, None] * adjacency * s[None, :]
    raise GradguideError(f"unknown Laplacian {kind!r}; known: {', '.join(LAPLACIANS)}")


def _inverse_sqrt(degree: torch.Tensor) -> torch.Tensor:
    safe = torch.where(degree > 0, degree, torch.ones_like(degree))
    return torch.where(degree > 0, safe.rsqrt(), torch.zeros_like(degree))


@dataclasses.dataclass
class Graph:
    """One parameter graph: its edges (i < j), node scales, and the Laplacian's eigenbasis.

    ``scale`` is 1 for every node of a combinatorial Laplacian and d_i^{-1/2} (0 if isolated) for
    a normalised one, so that tr(Xᵀ L X) = Σ_edges w_ij ‖s_i x_i − s_j x_j‖² in both cases.
    """

    edges: torch.Tensor  # 2 × E, long, i < j
    weights: torch.Tensor  # E
    scale: torch.Tensor  # n
    eigenvalues: torch.Tensor  # n, ascending
    eigenvectors: torch.Tensor  # n × n, column k is the k-th eigenvector
    laplacian: str

    @property
    def n(self) -> int:
        """Number of nodes."""
        return int(self.eigenvalues.shape[0])

    def adjacency(self) -> torch.Tensor:
        """The dense symmetric weight matrix (for tests and inspection)."""
        w = torch.zeros(self.n, self.n, dtype=self.weights.dtype)
        w[self.edges[0], self.edges[1]] = self.weights
        w[self.edges[1], self.edges[0]] = self.weights
        return w

    def laplacian_dense(self) -> torch.Tensor:
        """The dense Laplacian rebuilt from the edges (for tests and inspection)."""
        return laplacian_matrix(self.adjacency(), self.laplacian)

    def dirichlet(self, x: torch.Tensor) -> torch.Tensor:
        """tr(xᵀ L x) for x (n × c), from the edge list; differentiable in x."""
        x = x.to(self._wide(x))
        s = self.scale.to(x.dtype)[:, None]
        diff = (s[self.edges[0]] * x[self.edges[0]]) - (s[self.edges[1]] * x[self.edges[1]])
        return (self.weights.to(x.dtype)[:, None] * diff * diff).sum()

    def dirichlet_lowrank(self, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """tr((BA)ᵀ L (BA)) = Σ((Bᵀ L B) ⊙ (A Aᵀ)) for B (n × r), A (r × c), never forming BA."""
        b, a = b.to(self._wide(b)), a.to(self._wide(a))
        s = self.scale.to(b.dtype)[:, None]
        diff = (s[self.edges[0]] * b[self.edges[0]]) - (s[self.edges[1]] * b[self.edges[1]])
        gram = a @ a.T
        return (self.weights.to(b.dtype)[:, None] * (diff @ gram) * diff).sum()

    def filter(self, g: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
        """U diag(h) Uᵀ g for g (n × c) and a response h (n), using only the columns with h ≠ 0.

        Computed in the basis' precision (at least), returned in ``g``'s: a bf16 basis is no
        longer orthonormal, so the filter would not be a low-pass projection.
        """
        keep = torch.nonzero(response).flatten()
        if keep.numel() == self.n:
            u, h = self.eigenvectors, response
        else:
            u, h = self.eigenvectors[:, keep], response[keep]
        wide = self._wide(g)
        u, x = u.to(wide), g.to(wide)
        return (u @ (h.to(wide)[:, None] * (u.T @ x))).to(g.dtype)

    def frequency_energy(self, x: torch.Tensor) -> torch.Tensor:
        """Energy ‖(Uᵀx)_k‖² of x (n × c) in each eigen-component k (ascending frequency)."""
        x = x.to(self._wide(x))
        c = self.eigenvectors.to(x.dtype).T @ x
        return (c * c).sum(1)

    def frequency_energy_lowrank(self, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Energy of BA in each eigen-component, without forming BA."""
        b, a = b.to(self._wide(b)), a.to(self._wide(a))
        c = self.eigenvectors.to(b.dtype).T @ b
        return ((c @ (a @ a.T)) * c).sum(1)

    def _wide(self, x: torch.Tensor) -> torch.dtype:
        """The dtype to compute in: ``x``'s or the basis', whichever is wider."""
        return torch.promote_types(x.dtype, self.eigenvectors.dtype)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Graph:
        """This graph with its float tensors on ``device`` / in ``dtype``."""

        def move(t: torch.Tensor, floating: bool = True) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if floating else None)

        return Graph(
            move(self.edges, floating=False),
            move(self.weights),
            move(self.scale),
            move(self.eigenvalues),
            move(self.eigenvectors),
            self.laplacian,
        )

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """The graph as named tensors (for a safetensors file)."""
        return {
            f"{prefix}.edges": self.edges.contiguous(),
            f"{prefix}.weights": self.weights.contiguous(),
            f"{prefix}.scale": self.scale.contiguous(),
            f"{prefix}.eigenvalues": self.eigenvalues.contiguous(),
            f"{prefix}.eigenvectors": self.eigenvectors.contiguous(),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, Any], prefix: str, laplacian: str) -> Graph:
        """The inverse of :meth:`tensors`."""
        return cls(
            tensors[f"{prefix}.edges"],
            tensors[f"{prefix}.weights"],
            tensors[f"{prefix}.scale"],
            tensors[f"{prefix}.eigenvalues"],
            tensors[f"{prefix}.eigenvectors"],
            laplacian,
        )


def graph_from_adjacency(
    adjacency: torch.Tensor, laplacian: str, dtype: torch.dtype = torch.float32
) -> Graph:
    """The graph of a symmetric non-negative adjacency, eigendecomposed in float64."""
    w = adjacency.detach().to(torch.float64).cpu()
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise GradguideError(f"an adjacency matrix must be square, got {tuple(w.shape)}")
    if not torch.equal(w, w.T) or bool((w < 0).any()) or bool(w.diagonal().ne(0).any()):
        raise GradguideError("an adjacency matrix must be symmetric, non-negative, zero-diagonal")
    lap = laplacian_matrix(w, laplacian)
    eigenvalues, eigenvectors = torch.linalg.eigh(lap)
    i, j = torch.triu_indices(w.shape[0], w.shape[0], offset=1)
    keep = w[i, j] > 0
    degree = w.sum(1)
    scale = _inverse_sqrt(degree) if laplacian == "normalised" else torch.ones_like(degree)
    return Graph(
        edges=torch.stack([i[keep], j[keep]]),
        weights=w[i, j][keep].to(dtype),
        scale=scale.to(dtype),
        eigenvalues=eigenvalues.to(dtype),
        eigenvectors=eigenvectors.to(dtype),
        laplacian=laplacian,
    )


def build_graph(
    rows: torch.Tensor,
    *,
    knn: int = 10,
    similarity: str = "cosine",
    symmetrise: str = "max",
    laplacian: str = "normalised",
    dtype: torch.dtype = torch.float32,
) -> Graph:
    """The kNN similarity graph of the rows of a (pretrained) weight matrix, eigendecomposed."""
    return graph_from_adjacency(knn_adjacency(rows, knn, similarity, symmetrise), laplacian, dtype)
