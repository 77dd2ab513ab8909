"""An independent numpy implementation of ``shared/specs/fingerprint-v1.md`` and of the seed's
zone rules, written straight from the formulas (a dense ``P``, distance masks, ``np.log``). The
tests hold the Rust core to it; ``benches/`` uses it as the numpy baseline."""

from __future__ import annotations

import numpy as np

HIST_EDGES = (0, 1, 4, 16, 64, 256, 1024, 4096, np.inf)


def reference_fingerprints(attn, query_positions=None, dtype=np.float64):
    """``(T, 20)`` float32 fingerprints of ``(L, H, N)`` or ``(T, L, H, N)`` attention, computed
    in ``dtype`` one step at a time."""
    a = np.asarray(attn)
    if a.ndim == 3:
        a = a[None]
    steps, layers, _heads, n = a.shape
    if query_positions is None:
        queries = n - steps + np.arange(steps)
    else:
        queries = np.asarray(query_positions).reshape(-1)
    out = np.zeros((steps, 20), dtype=np.float64)
    keys = np.arange(n)
    for t in range(steps):
        step = a[t].astype(dtype)
        rows = step / step.sum(axis=-1, keepdims=True)  # A[l, h, :] / its sum
        p = rows.mean(axis=1).mean(axis=0)  # P_l = mean over h; P = mean over l
        d = np.abs(queries[t] - keys)
        out[t, 0] = p[d < 32].sum()
        out[t, 1] = p[(d >= 32) & (d < 256)].sum()
        out[t, 2] = p[d >= 256].sum()
        logs = np.log(rows, out=np.zeros_like(rows), where=rows > 0)
        entropy = -(rows * logs).sum(axis=-1)  # H(A[l, h, :]), (L, H)
        out[t, 3] = entropy.mean()
        for b in range(8):
            out[t, 4 + b] = p[(d >= HIST_EDGES[b]) & (d < HIST_EDGES[b + 1])].sum()
        per_layer = entropy.mean(axis=1)
        if layers < 8:
            out[t, 12 : 12 + layers] = per_layer
        else:
            slot = np.arange(layers) * 8 // layers
            for j in range(8):
                out[t, 12 + j] = per_layer[slot == j].mean()
    return out.astype(np.float32)


def reference_topk(positions, scores, query_positions, context_length):
    """Top-k fingerprints by scattering the entries into dense rows: zero weights add nothing
    to any value, so the dense formulas over the scattered rows are the formulas over the
    entries."""
    pos = np.asarray(positions)
    sc = np.asarray(scores, dtype=np.float64)
    if pos.ndim == 3:
        pos, sc = pos[None], sc[None]
    dense = np.zeros((*pos.shape[:3], context_length))
    np.put_along_axis(dense, pos, sc, axis=-1)
    return reference_fingerprints(dense, np.atleast_1d(query_positions))


def reference_zones(fps):
    """Zone names and confidences by the seed discovery job's rules, row by row."""
    zones, confidences = [], []
    for fp in np.atleast_2d(np.asarray(fps, dtype=np.float64)):
        local, mid, long, entropy = fp[:4]
        variance = np.var(fp[4:12])
        if local > 0.5 and entropy < 2.5:
            zones.append("syntax_floor")
            confidences.append(min(1.0, local * (1 - entropy / 4)))
        elif long > 0.25 and variance > 0.1:
            zones.append("structure_ripple")
            confidences.append(min(1.0, long + variance))
        else:
            total = local + mid + long
            zones.append("semantic_bridge")
            confidences.append(mid / total if total > 0 else 0.0)
    return zones, np.array(confidences)
