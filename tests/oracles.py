"""Plain-loop oracles written from the formulas of the spec, independent of the package's helpers.

They are slow on purpose (Python floats, one element at a time) and used on tiny inputs only.
"""
import math

import torch


def her_embed_by_hand(weight, input_ids, history_ids, history_len, token_mask, *, decay=0.0, rotate=True,
                      ln_weight=None, ln_bias=None, eps=1e-5) -> torch.Tensor:
    """History Reference embeddings (docs/spec.md §3) in float64, by explicit loops over the formula:

        s_i   = sum_{d=1..len_b} exp(-decay * (d - 1)) * Rot_d(E[h^(d)_i]) * g_i
        Rot_d : halves a = e[:D//2], b = e[D//2 : 2*(D//2)], the odd last dim passes through;
                theta_k = d / 10000**(k / (D//2));  [a cos - b sin, a sin + b cos]
        out_i = E[x_i] + LayerNorm(s_i) * ln_weight + ln_bias   (rows with history), E[x_i] otherwise
    """
    E = weight.double().tolist()
    B, H, L = history_ids.shape
    D = len(E[0])
    half = D // 2
    lw = [1.0] * D if ln_weight is None else ln_weight.double().tolist()
    lb = [0.0] * D if ln_bias is None else ln_bias.double().tolist()
    out = torch.zeros(B, L, D, dtype=torch.float64)
    for b in range(B):
        n = int(history_len[b])
        for i in range(L):
            cur = E[int(input_ids[b, i])]
            if n == 0:
                out[b, i] = torch.tensor(cur, dtype=torch.float64)
                continue
            s = [0.0] * D
            g = 1.0 if bool(token_mask[b, i]) else 0.0
            for d in range(1, n + 1):
                e = E[int(history_ids[b, d - 1, i])]
                r = list(e)
                if rotate:
                    for k in range(half):
                        theta = d / 10000.0 ** (k / half)
                        a, c = e[k], e[half + k]
                        r[k] = a * math.cos(theta) - c * math.sin(theta)
                        r[half + k] = a * math.sin(theta) + c * math.cos(theta)
                w = math.exp(-decay * (d - 1))
                for j in range(D):
                    s[j] += w * r[j] * g
            mean = sum(s) / D
            var = sum((v - mean) ** 2 for v in s) / D
            for j in range(D):
                out[b, i, j] = cur[j] + (s[j] - mean) / math.sqrt(var + eps) * lw[j] + lb[j]
    return out
