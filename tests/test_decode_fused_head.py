"""generate(..., fused_head=True): statistics from the LM head's input (rm_linear_stats, docs/spec.md §9).

Decoding with the fused head must equal decoding with full logits (fused_head=False) on the tests'
models, and the fast path must equal the reference loop, with guidance, suppression, History
Reference, sampling and Dream's logits shift. The models here implement the interface of the native
LLaDA / Dream models (``return_hidden=True`` -> ``.hidden``, ``get_output_embeddings()``,
``config.vocab_size`` below the head's row count, ``logits_shift``); a tiny BERT covers the generic
Hugging Face path (the output embedding swapped for a capturing identity).
"""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from rmkernels import DecodeConfig, HistoryNorm, generate
from rmkernels.decode import RMModel, replay_statistics
from rmkernels.models import TinyMDM, TinyMDMConfig

V, M, PAD = 23, 22, 5  # vocabulary, mask id, padding rows of the head (embedding_size = V + PAD)
MASK_BIAS = 0.5

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def wide_interpreter_tiles(monkeypatch):
    """Fewer, wider programs in the Triton interpreter (test_linear_stats covers the tile edges)."""
    import rmkernels.ops.linear_stats as ls_mod

    monkeypatch.setattr(ls_mod, "_INTERPRET_BLOCKS", (64, 32, 32))


class HiddenMDM(nn.Module):
    """A tiny MDM with the native models' interface. Its last hidden feature is ``sin(40 h.u)`` of the
    trunk's output, and only the mask's head row reads it (plus a bias at the level of the best
    token's logit), so the mask competes with the best token and flips with small context changes:
    positions abstain and visible tokens get re-masked (the role of test_decode's MaskCompetitive)."""

    def __init__(self, seed: int, logits_shift: int = 0, dim: int = 32, k: float = 3.0, mask_bias: float = MASK_BIAS):
        super().__init__()
        torch.manual_seed(seed)
        self.inner = TinyMDM(TinyMDMConfig(vocab_size=V + PAD, max_len=48, dim=dim, depth=2, heads=2))
        self.inner.head = nn.Identity()  # the trunk returns the final-normed hidden states
        self.u = nn.Parameter(torch.randn(dim) / dim**0.5, requires_grad=False)
        self.lm_head = nn.Linear(dim + 1, V + PAD)
        with torch.no_grad():
            self.inner.pos.normal_(0.0, 1.0)
            self.lm_head.weight[:, dim] = 0.0
            self.lm_head.weight[M] = 0.0
            self.lm_head.weight[M, dim] = k
            self.lm_head.bias[M] = mask_bias
            self.lm_head.weight[V:] = 0.0
            self.lm_head.bias[V:] = 100.0  # padding rows: would win everything if they were scored
        self.config = SimpleNamespace(vocab_size=V, max_len=48)
        self.logits_shift = logits_shift

    def get_input_embeddings(self):
        return self.inner.tok

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, return_hidden=False):
        h = self.inner(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        h = torch.cat([h, torch.sin(40.0 * (h @ self.u))[..., None]], -1)
        if return_hidden:
            return SimpleNamespace(hidden=h, logits=None)
        return SimpleNamespace(hidden=None, logits=self.lm_head(h)[..., :V])


def random_norm(dim: int, seed: int) -> HistoryNorm:
    g = torch.Generator().manual_seed(seed)
    norm = HistoryNorm(dim)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(dim, generator=g) * 0.5)
        norm.bias.copy_(torch.randn(dim, generator=g) * 0.1)
    return norm


def prompts_batch(seed: int, B: int = 3, P: int = 6):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, M, (B, P), generator=g)
    lengths = torch.randint(1, P + 1, (B,), generator=g)
    lengths[0] = P
    am = (torch.arange(P)[None, :] >= P - lengths[:, None]).long()
    return ids, am


def assert_same_decode(a, b):
    assert torch.equal(a.sequences, b.sequences), (a.sequences, b.sequences)
    assert torch.equal(a.steps, b.steps), (a.steps, b.steps)
    if a.trajectory is not None and b.trajectory is not None:
        assert torch.equal(a.trajectory, b.trajectory)


CASES = [
    dict(reveal="topk", reveal_per_step=2, block_size=4, steps=12, history_steps=0),
    dict(reveal="topk", reveal_per_step=2, steps=10, cfg_scale=1.5, suppress_tokens=(0, 5), history_steps=2),
    dict(reveal="all", steps=10, temperature=0.9, seed=7, max_remask=2, history_steps=3, history_decay=0.3),
    dict(reveal="threshold", reveal_threshold=0.5, steps=8, fill_remaining=True, history_steps=0, cfg_scale=0.5),
]


@pytest.mark.parametrize("case,shift", [(0, 0), (1, 0), (2, 0), (3, 1), (0, 1), (2, 1)])
def test_fused_head_equals_full_logits_and_reference(case, shift):
    """Fused fast path == decoding with full logits, and == the fused reference loop (LLaDA-like,
    shift 0, and Dream-like, shift 1). The full-logits side is the reference loop with
    fused_head=False (test_decode shows the fast path equals it)."""
    seed = 10 * case + shift
    model = HiddenMDM(seed, logits_shift=shift)
    rm = RMModel(model, random_norm(32, seed))
    ids, am = prompts_batch(seed)
    cfg = DecodeConfig(**CASES[case], record_trajectory=True)
    full = generate(rm, ids, cfg, mask_id=M, attention_mask=am, gen_length=8, impl="reference")
    fused = generate(rm, ids, cfg, mask_id=M, attention_mask=am, gen_length=8, fused_head=True)
    ref = generate(rm, ids, cfg, mask_id=M, attention_mask=am, gen_length=8, fused_head=True, impl="reference")
    assert_same_decode(full, fused)
    assert_same_decode(ref, fused)


def test_cases_exercise_reveal_abstain_and_remask():
    """The comparisons are meaningful: the model's decoding reveals, abstains and re-masks."""
    model = HiddenMDM(0)
    ids, am = prompts_batch(0)
    out = generate(RMModel(model), ids, DecodeConfig(**CASES[0], record_trajectory=True), mask_id=M,
                   attention_mask=am, gen_length=8, fused_head=True)
    stats = replay_statistics(out.trajectory, M)
    assert int(stats.reveals.sum()) > 0 and int(stats.remasks.sum()) > 0
    # some step revealed fewer positions than it could (a masked position whose argmax is the mask)
    revealed = (out.trajectory[:-1] == M) & (out.trajectory[1:] != M)
    assert bool((revealed.sum(-1) < 2)[:-1].any())


def test_shift_and_padding_rows_are_applied():
    """The adapter shifts hidden states as it shifts logits, and ignores the head's padding rows."""
    model = HiddenMDM(3, logits_shift=1).eval()
    rm = RMModel(model)
    ids = torch.randint(0, M, (2, 7))
    with torch.no_grad():
        h = rm.hidden(input_ids=ids)
        logits = rm(input_ids=ids)
        w, b, vocab = rm.lm_head()
        raw = model(input_ids=ids, return_hidden=True).hidden
    assert vocab == V and w.shape[0] == V + PAD
    assert torch.equal(h[:, 0], raw[:, 0]) and torch.equal(h[:, 1:], raw[:, :-1])
    torch.testing.assert_close(logits, torch.nn.functional.linear(h, w, b)[..., :V])


def bert_model(seed):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    return transformers.BertForMaskedLM(cfg).eval()


@pytest.mark.parametrize("hist", [0, 2])
def test_hf_model_through_the_capturing_identity(hist):
    model = bert_model(hist)
    rm = RMModel(model, random_norm(32, 3))
    assert rm.supports_fused_head and rm.lm_head()[2] == V
    ids, am = prompts_batch(hist + 11)
    cfg = DecodeConfig(steps=8, reveal_per_step=2, block_size=4, history_steps=hist, cfg_scale=1.0,
                       record_trajectory=True)
    full = generate(rm, ids, cfg, mask_id=M, attention_mask=am, gen_length=8, impl="reference")
    fused = generate(rm, ids, cfg, mask_id=M, attention_mask=am, gen_length=8, fused_head=True)
    assert_same_decode(full, fused)
    assert "forward" not in rm._output_embeddings().__dict__  # the head is restored


def test_fused_head_bad_input():
    class NoHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(V, 8)

        def get_input_embeddings(self):
            return self.tok

        def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None):
            return torch.zeros(*input_ids.shape, V)

    ids = torch.randint(0, M, (1, 4))
    with pytest.raises(ValueError, match="fused_head"):
        generate(NoHead(), ids, mask_id=M, gen_length=4, history_steps=0, fused_head=True)
    with pytest.raises(ValueError, match="fused_head"):
        DecodeConfig(fused_head=1)
    model = HiddenMDM(1)
    with pytest.raises(ValueError, match="suppress_tokens"):
        generate(model, ids, mask_id=M, gen_length=4, history_steps=0, fused_head=True, suppress_tokens=(V,))
    with pytest.raises(ValueError, match="mask_id"):  # the mask must be a real token, not a padding row
        generate(model, ids, mask_id=V + 1, gen_length=4, history_steps=0, fused_head=True)
    model.logits_shift = 2
    with pytest.raises(ValueError, match="logits_shift"):
        RMModel(model)


# ---------------------------------------------------------------------------------------------
# the native LLaDA / Dream models (return_hidden=True; Dream's logits shift; LLaDA's padding rows)
# ---------------------------------------------------------------------------------------------
def native_model(kind: str, seed: int):
    from rmkernels.models import DreamConfig, DreamModel, LLaDAConfig, LLaDAModel

    torch.manual_seed(seed)
    if kind == "llada":
        cfg = LLaDAConfig(d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=48, vocab_size=V,
                          embedding_size=V + PAD, rope_theta=1000.0, mask_token_id=M, max_sequence_length=64)
        model = LLaDAModel(cfg)
    else:
        cfg = DreamConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, rope_theta=1000.0, vocab_size=V, mask_token_id=M,
                          max_position_embeddings=64)
        model = DreamModel(cfg)
    with torch.no_grad():  # weights large enough that the decoding depends on the context
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
        head = model.get_output_embeddings()
        if getattr(head, "bias", None) is not None:
            head.bias.normal_(0.0, 1.0)
    return model.eval()


@pytest.mark.parametrize("kind", ["llada", "dream"])
@pytest.mark.parametrize("case", [1, 2])
def test_native_models_fused_head(kind, case):
    """LLaDAModel / DreamModel: fused == full logits, fused fast == fused reference (HER, CFG, sampling)."""
    model = native_model(kind, case)
    rm = RMModel(model, random_norm(32, case))
    assert rm.supports_fused_head and rm.lm_head()[2] == V and rm.logits_shift == (kind == "dream")
    ids, am = prompts_batch(case)
    cfg = DecodeConfig(**CASES[case], record_trajectory=True)
    full = generate(rm, ids, cfg, mask_id=M, attention_mask=am, gen_length=8, impl="reference")
    fused = generate(rm, ids, cfg, mask_id=M, attention_mask=am, gen_length=8, fused_head=True)
    ref = generate(rm, ids, cfg, mask_id=M, attention_mask=am, gen_length=8, fused_head=True, impl="reference")
    assert_same_decode(full, fused)
    assert_same_decode(ref, fused)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fused_head_graph_replay():
    """On the GPU: the fused step (Triton rm_linear_stats) captured in a CUDA graph equals the
    reference loop, with HER, guidance and sampling."""
    model = HiddenMDM(5).cuda()
    rm = RMModel(model, random_norm(32, 5).cuda())
    ids, am = (t.cuda() for t in prompts_batch(5))
    for case in (1, 2):
        cfg = DecodeConfig(**CASES[case], record_trajectory=True)
        ref = generate(rm, ids, cfg, mask_id=M, attention_mask=am, gen_length=8, fused_head=True, impl="reference")
        for graph in (False, True):
            fast = generate(rm, ids, cfg, mask_id=M, attention_mask=am, gen_length=8, fused_head=True,
                            cuda_graph=graph)
            assert_same_decode(ref, fast)
