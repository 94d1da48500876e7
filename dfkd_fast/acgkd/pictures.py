"""A PNG grid of pseudo-graphs, nodes coloured by type (argmax of the node features), drawn with Pillow.

A legend under the grid names the colours (``node type k`` = feature k, or the names passed in) and says what the
lines and each cell's caption mean.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dfkd_fast.models.gnn import DenseGraphs

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def layout(adj: np.ndarray, iterations: int = 150, seed: int = 0) -> np.ndarray:
    """Fruchterman-Reingold positions in [0, 1]^2 for a small graph (``adj`` symmetric 0/1, no self-loops)."""
    n = adj.shape[0]
    pos = np.random.RandomState(seed).rand(n, 2)
    k = 1.0 / math.sqrt(max(n, 1))
    for it in range(iterations):
        delta = pos[:, None, :] - pos[None, :, :]
        dist = np.maximum(np.linalg.norm(delta, axis=-1), 1e-3)
        force = k * k / dist**2 - adj * dist / k  # repulsion between all pairs, attraction along edges
        disp = (delta * force[:, :, None]).sum(1) - (pos - pos.mean(0))  # gravity keeps components close
        length = np.maximum(np.linalg.norm(disp, axis=1, keepdims=True), 1e-9)
        temperature = 0.1 * (1 - it / iterations)  # the largest move, cooling linearly
        pos += disp / length * np.minimum(length, temperature)
    pos -= pos.min(0)
    return pos / np.maximum(pos.max(0), 1e-9)


LEGEND_ROW = 16  # pixels per legend line


def legend_entries(num_types: int, names: list[str] | None = None) -> list[tuple[tuple[int, int, int], str]]:
    """(colour, label) of each node type; types beyond the palette share colours, as in the drawing."""
    names = names or [f"node type {k}" for k in range(num_types)]
    if len(names) != num_types:
        raise ValueError(f"draw_graphs: argument 'type_names' must name the {num_types} node types, got "
                         f"{len(names)} names")
    return [(PALETTE[k % len(PALETTE)], names[k]) for k in range(num_types)]


def draw_graphs(graphs: DenseGraphs, path: str | Path, cell: int = 160, columns: int = 4,
                type_names: list[str] | None = None) -> Path:
    """Draw every graph of the padded batch in a grid of ``columns``, with a legend below, and write the PNG."""
    from PIL import Image, ImageDraw

    count = graphs.mask.shape[0]
    rows = max(1, math.ceil(count / columns))
    entries = legend_entries(graphs.x.shape[-1], type_names)
    per_line = max(1, (columns * cell - 8) // 120)
    legend_lines = 1 + math.ceil(len(entries) / per_line)
    image = Image.new("RGB", (columns * cell, rows * cell + legend_lines * LEGEND_ROW + 6), "white")
    draw = ImageDraw.Draw(image)
    adj = graphs.adj.detach().float().cpu().numpy()
    types = graphs.x.detach().argmax(-1).cpu().numpy()
    sizes = graphs.mask.sum(1).cpu().numpy()
    for g in range(count):
        n = int(sizes[g])
        a = (adj[g, :n, :n] > 0.5) | (adj[g, :n, :n].T > 0.5)  # draw directed edges as lines too
        np.fill_diagonal(a, False)
        pos = layout(a.astype(np.float64), seed=g)
        ox, oy = (g % columns) * cell, (g // columns) * cell
        pad = 14
        xy = [(ox + pad + p[0] * (cell - 2 * pad), oy + pad + p[1] * (cell - 2 * pad)) for p in pos]
        for i, j in zip(*np.nonzero(np.triu(a))):
            draw.line([xy[i], xy[j]], fill=(150, 150, 150), width=1)
        for i in range(n):
            x, y = xy[i]
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=PALETTE[int(types[g, i]) % len(PALETTE)],
                         outline=(0, 0, 0))
        draw.rectangle([ox, oy, ox + cell - 1, oy + cell - 1], outline=(220, 220, 220))
        draw.text((ox + 3, oy + 2), f"#{g} n={n}", fill=(0, 0, 0))
    top = rows * cell + 4
    draw.text((4, top), "colour = node type (argmax of the node features); grey line = edge; #graph n=nodes",
              fill=(0, 0, 0))
    for k, (colour, label) in enumerate(entries):
        x, y = 4 + (k % per_line) * 120, top + LEGEND_ROW * (1 + k // per_line)
        draw.ellipse([x, y + 2, x + 8, y + 10], fill=colour, outline=(0, 0, 0))
        draw.text((x + 12, y), label, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def draw_pyg(graphs: list, path: str | Path, **kwargs) -> Path:
    """The same grid for a list of PyG graphs (e.g. real graphs, to compare with the pseudo-graphs)."""
    from torch_geometric.data import Batch

    from dfkd_fast.models.gnn import to_dense

    return draw_graphs(to_dense(Batch.from_data_list(graphs)), path, **kwargs)

