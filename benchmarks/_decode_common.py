"""A "model" whose forward costs nothing, for timing the decoder's own work per step."""
import torch
import torch.nn as nn


class FixedLogitsModel(nn.Module):
    """Returns the same position-dependent logits ``[L, V]`` for every row (a broadcast view, no
    copy), and exposes an embedding table so History Reference runs too."""

    def __init__(self, L: int, V: int, D: int, mask_id: int, device="cpu", dtype=torch.float32, seed=0):
        super().__init__()
        g = torch.Generator(device="cpu").manual_seed(seed)
        z = torch.randn(L, V, generator=g) * 2
        z[:, mask_id] = z.max(-1).values - 1.0 + torch.randn(L, generator=g)  # the mask competes: abstain/re-mask
        self.logits = z.to(device=device, dtype=dtype)
        self.emb = nn.Embedding(V, D, device=device, dtype=dtype)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None):
        x = input_ids if input_ids is not None else inputs_embeds[..., 0]
        return self.logits.expand(x.shape[0], *self.logits.shape)
