"""An independent, deliberately literal non-local block: loops over i and j, straight from
the formula in spec/nonlocal.md. It shares no code with `nonlocal_core.reference`; the
vectorised reference must agree with it to 1e-12.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def _vector_at(features, b, position, data_format):
    """The channel vector of batch element b at a spatial index tuple."""
    if data_format == "channels_first":
        return np.array(features[(b, slice(None), *position)], dtype=float)
    return np.array(features[(b, *position, slice(None))], dtype=float)


def _linear(weight, bias, v):
    return [sum(weight[o][c] * v[c] for c in range(len(v))) + bias[o] for o in range(len(bias))]


def _pool_grid(grid, extent, window):
    """grid: dict position -> vector. Max over each full window, row-major key order."""
    if window is None:
        return [grid[p] for p in itertools.product(*(range(e) for e in extent))]
    kept = [e // w for e, w in zip(extent, window)]
    out = []
    for k in itertools.product(*(range(n) for n in kept)):
        members = [
            grid[tuple(ki * w + oi for ki, w, oi in zip(k, window, offs))]
            for offs in itertools.product(*(range(w) for w in window))
        ]
        out.append([max(m[c] for m in members) for c in range(len(members[0]))])
    return out


def loop_forward(x, weights, cfg, context=None, key_mask=None, training=False):
    """z and the attention matrix, computed one (i, j) pair at a time."""
    fmt = cfg["data_format"]
    dims = cfg["spatial_dims"]
    B = x.shape[0]
    S = x.shape[2:] if fmt == "channels_first" else x.shape[1:-1]
    xh = x if context is None else context
    Sc = xh.shape[2:] if fmt == "channels_first" else xh.shape[1:-1]
    positions = list(itertools.product(*(range(e) for e in S)))
    ctx_positions = list(itertools.product(*(range(e) for e in Sc)))
    inst = cfg["instantiation"]
    window = cfg["subsample"]
    assert len(S) == dims

    ys = []  # per batch element: list of y_i
    attention = []
    for b in range(B):
        xi = {p: _vector_at(x, b, p, fmt) for p in positions}
        xj = {p: _vector_at(xh, b, p, fmt) for p in ctx_positions}
        if inst == "gaussian":
            theta = [xi[p] for p in positions]
            phi = _pool_grid(xj, Sc, window)
        else:
            theta = [
                _linear(weights["theta.weight"], weights["theta.bias"], xi[p]) for p in positions
            ]
        if cfg["pool_position"] == "before_projection":
            pooled = _pool_grid(xj, Sc, window)
            g = [_linear(weights["g.weight"], weights["g.bias"], v) for v in pooled]
            if inst != "gaussian":
                phi = [_linear(weights["phi.weight"], weights["phi.bias"], v) for v in pooled]
        else:
            g_grid = {p: _linear(weights["g.weight"], weights["g.bias"], xj[p]) for p in xj}
            g = _pool_grid(g_grid, Sc, window)
            if inst != "gaussian":
                phi_grid = {
                    p: _linear(weights["phi.weight"], weights["phi.bias"], xj[p]) for p in xj
                }
                phi = _pool_grid(phi_grid, Sc, window)
        n_keys = len(phi)
        valid = [True] * n_keys if key_mask is None else list(np.asarray(key_mask[b]).ravel())
        rows = []
        for th in theta:
            f = []
            for j in range(n_keys):
                if not valid[j]:
                    f.append(None)
                    continue
                dot = sum(t * p for t, p in zip(th, phi[j]))
                if inst in ("gaussian", "embedded_gaussian"):
                    d = len(th)
                    s = cfg["logit_scale"]
                    s = 1 / math.sqrt(d) if s is None else s
                    f.append(s * dot)  # logits; exponentiated below
                elif inst == "dot_product":
                    f.append(dot)
                else:
                    w = weights["concat.weight"]
                    half = len(w) // 2
                    cat = list(th) + list(phi[j])  # [theta_i ; phi_j]
                    f.append(max(0.0, sum(w[k] * cat[k] for k in range(2 * half))))
            if inst in ("gaussian", "embedded_gaussian"):
                logits = [v for v in f if v is not None]
                m = max(logits) if logits else 0.0
                e = [0.0 if v is None else math.exp(v - m) for v in f]
                total = sum(e)
                row = [v / total if total > 0 else 0.0 for v in e]
            else:
                count = sum(1 for v in valid if v)
                row = [0.0 if v is None or count == 0 else v / count for v in f]
            rows.append(row)
        attention.append(rows)
        ys.append(
            [
                [sum(row[j] * g[j][c] for j in range(n_keys)) for c in range(len(g[0]))]
                for row in rows
            ]
        )

    # Output transform over every (b, i).
    C = len(weights["out.bias"])
    u = np.array(
        [[_linear(weights["out.weight"], weights["out.bias"], y) for y in ys[b]] for b in range(B)]
    )  # (B, N, C)
    if cfg["norm"] == "batch":
        count = B * len(positions)
        for c in range(C):
            if training:
                mean = sum(u[b, i, c] for b in range(B) for i in range(len(positions))) / count
                var = sum((u[b, i, c] - mean) ** 2 for b in range(B) for i in range(len(positions)))
                var /= count
            else:
                mean, var = weights["norm.running_mean"][c], weights["norm.running_var"][c]
            for b in range(B):
                for i in range(len(positions)):
                    u[b, i, c] = (u[b, i, c] - mean) / math.sqrt(var + cfg["norm_eps"]) * weights[
                        "norm.gamma"
                    ][c] + weights["norm.beta"][c]
    z = np.zeros(x.shape)
    for b in range(B):
        for i, p in enumerate(positions):
            for c in range(C):
                value = u[b, i, c]
                if cfg["residual"]:
                    value += _vector_at(x, b, p, fmt)[c]
                index = (b, c, *p) if fmt == "channels_first" else (b, *p, c)
                z[index] = value
    return z, np.array(attention)
