"""Native LLaDA / Dream models: layers by hand, attention backends, checkpoints, KV cache, decoding."""
import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from rmkernels import DecodeConfig, HistoryNorm, generate
from rmkernels.decode import RMModel
from rmkernels.models import (
    DreamConfig, DreamModel, KVCache, LLaDAConfig, LLaDAModel, RMSNorm, apply_rope, attention, load_pretrained,
    rope_cos_sin,
)

pytestmark = pytest.mark.usefixtures("one_thread")

V, M = 60, 59  # vocabulary, mask id


def llada_cfg(**kw):
    base = dict(d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=48, vocab_size=V,
                embedding_size=64, rope_theta=1000.0, rms_norm_eps=1e-5, mask_token_id=M, max_sequence_length=64)
    return LLaDAConfig(**{**base, **kw})


def dream_cfg(**kw):
    base = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, rope_theta=1000.0, rms_norm_eps=1e-6, vocab_size=V, mask_token_id=M,
                max_position_embeddings=64)
    return DreamConfig(**{**base, **kw})


def spread(model, seed: int):
    """Random weights large enough that attention is far from uniform and every parameter matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]) * (3.0 if "wte" in name or "embed" in name else 1.0))
    return model.eval()


def llada(seed=0, attn_impl="auto", **kw):
    return spread(LLaDAModel(llada_cfg(**kw), attn_impl=attn_impl), seed)


def dream(seed=0, attn_impl="auto", **kw):
    return spread(DreamModel(dream_cfg(**kw), attn_impl=attn_impl), seed)


def ids_and_mask(seed, B=3, L=11):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, L), generator=g)
    lengths = torch.tensor([L] + [max(1, L - 2 - 3 * b) for b in range(1, B)])
    am = torch.arange(L)[None, :] < lengths[:, None]  # right padding, as the decoder's canvas
    return ids, am


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


# --- layers by hand ------------------------------------------------------------------------------
def test_rmsnorm_by_hand():
    norm = RMSNorm(4, eps=0.0)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([2.0, 1.0, 1.0, 0.5]))
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])  # rms 2.5 and 1
    close(norm(x), torch.tensor([[2.4, 1.6, 0.0, 0.0], [2.0, 1.0, 1.0, 0.5]]))
    eps = RMSNorm(2, eps=1.0)(torch.tensor([[1.0, 1.0]]))  # 1 / sqrt(1 + 1)
    close(eps, torch.full((1, 2), 1 / math.sqrt(2.0)))
    # bf16 input: normalised in fp32 (sum of squares of 300s would lose precision otherwise), bf16 out
    xb = torch.full((1, 64), 300.0, dtype=torch.bfloat16)
    out = RMSNorm(64, eps=0.0, dtype=torch.bfloat16)(xb)
    assert out.dtype == torch.bfloat16 and torch.equal(out, torch.ones_like(out))


def test_rope_by_hand():
    theta = 10000.0
    cos, sin = rope_cos_sin(torch.tensor([[0, 1]]), 4, theta)  # inv_freq = [1, 1/100]
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).expand(1, 1, 2, 4)
    out = apply_rope(x, cos, sin)[0, 0]
    close(out[0], torch.tensor([1.0, 2.0, 3.0, 4.0]))  # position 0: identity
    a, b = 1.0, 0.01  # angles at position 1; rotate-half pairs (x0, x2) and (x1, x3)
    want = [1 * math.cos(a) - 3 * math.sin(a), 2 * math.cos(b) - 4 * math.sin(b),
            3 * math.cos(a) + 1 * math.sin(a), 4 * math.cos(b) + 2 * math.sin(b)]
    close(out[1], torch.tensor(want))
    # scores depend on relative positions only
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    def score(m, n):
        cq, sq = rope_cos_sin(torch.tensor([[m]]), 8, theta)
        ck, sk = rope_cos_sin(torch.tensor([[n]]), 8, theta)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()
    close(score(7, 3), score(14, 10))
    assert not torch.allclose(score(7, 3), score(3, 7))


# --- attention backends --------------------------------------------------------------------------
@pytest.mark.parametrize("Hq,Hkv,Lq,Lk", [(4, 4, 7, 7), (6, 2, 5, 9), (4, 1, 1, 13)])
def test_eager_equals_sdpa_with_padding_and_gqa(Hq, Hkv, Lq, Lk):
    g = torch.Generator().manual_seed(Hq * 100 + Lk)
    q = torch.randn(3, Hq, Lq, 8, generator=g) * 2
    k, v = torch.randn(3, Hkv, Lk, 8, generator=g) * 2, torch.randn(3, Hkv, Lk, 8, generator=g)
    mask = torch.rand(3, Lk, generator=g) < 0.6
    mask[:, 0] = True
    mask[0] = True
    eager = attention(q, k, v, mask, attn_impl="eager")
    close(attention(q, k, v, mask, attn_impl="sdpa"), eager)
    close(attention(q, k, v, mask, attn_impl="auto"), eager)  # CPU: auto = sdpa
    # by hand for one query of row 1: softmax over the real keys only
    h, i = Hq - 1, Lq - 1
    kh, vh = k[1, h // (Hq // Hkv)], v[1, h // (Hq // Hkv)]
    s = (kh @ q[1, h, i]) / math.sqrt(8)
    s[~mask[1]] = float("-inf")
    close(eager[1, h, i], torch.softmax(s, 0) @ vh)
    # padded keys have no influence
    k2, v2 = k.clone(), v.clone()
    k2[~mask[:, None, :, None].expand_as(k)] = 1e3
    v2[~mask[:, None, :, None].expand_as(v)] = -7.0
    close(attention(q, k2, v2, mask, attn_impl="sdpa"), eager)
    # a row with no real key: zero output in both
    none = mask.clone()
    none[2] = False
    for impl in ("eager", "sdpa"):
        assert torch.equal(attention(q, k, v, none, attn_impl=impl)[2], torch.zeros_like(q[2]))


def test_attention_rejects_bad_input():
    q, k = torch.randn(1, 3, 4, 8), torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="multiple"):
        attention(q, k, k)
    with pytest.raises(ValueError, match="attn_impl"):
        attention(k, k, k, attn_impl="xformers")
    with pytest.raises(ValueError, match="key_mask"):
        attention(k, k, k, torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="flash"):
        attention(k, k, k, attn_impl="flash")  # CPU fp32: flash cannot run
    with pytest.raises(ValueError, match="attn_impl"):
        llada(attn_impl="nope")


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_model_eager_equals_sdpa_and_batch_invariance(family):
    model = llada(1) if family == "llada" else dream(1)
    ids, am = ids_and_mask(1)
    model.attn_impl = "eager"
    eager = model(ids, attention_mask=am).logits
    model.attn_impl = "sdpa"
    sdpa = model(ids, attention_mask=am.long()).logits  # int masks work too
    close(sdpa, eager, 1e-4)
    for b in range(ids.shape[0]):  # a row alone (unpadded) == the same row in the padded batch
        n = int(am[b].sum())
        alone = model(ids[b : b + 1, :n]).logits
        close(alone[0], sdpa[b, :n], 1e-4)
    # padding tokens do not influence real positions
    ids2 = torch.where(am, ids, (ids + 7) % V)
    close(model(ids2, attention_mask=am).logits[am], sdpa[am], 1e-4)


# --- architecture facts --------------------------------------------------------------------------
def test_llada_parameter_names_and_shapes():
    m = LLaDAModel(llada_cfg(include_bias=True))
    sd = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    t = "model.transformer."
    assert sd[t + "wte.weight"] == (64, 32) and sd[t + "ff_out.weight"] == (64, 32) and sd[t + "ff_out.bias"] == (64,)
    assert sd[t + "ln_f.weight"] == (32,)
    for i in range(2):
        b = f"{t}blocks.{i}."
        assert sd[b + "q_proj.weight"] == (32, 32) and sd[b + "k_proj.weight"] == (16, 32) and sd[b + "v_proj.weight"] == (16, 32)
        assert sd[b + "attn_out.weight"] == (32, 32)
        assert sd[b + "ff_proj.weight"] == (48, 32) and sd[b + "up_proj.weight"] == (48, 32) and sd[b + "ff_out.weight"] == (32, 48)
        assert sd[b + "attn_norm.weight"] == (32,) and sd[b + "ff_norm.weight"] == (32,)
        assert sd[b + "q_proj.bias"] == (32,)
    assert len(sd) == 4 + 2 * (9 + 7)  # wte, ln_f, ff_out w+b; per block 2 norms + 7 linears, 7 biases
    tied = LLaDAModel(llada_cfg(weight_tying=True))
    assert t + "ff_out.weight" not in tied.state_dict() and tied.get_output_embeddings() is tied.get_input_embeddings()


def test_dream_parameter_names():
    m = DreamModel(dream_cfg())
    names = set(m.state_dict())
    want = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(2):
        p = f"model.layers.{i}."
        want |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight", p + "self_attn.o_proj.weight"}
        want |= {p + f"self_attn.{n}_proj.{w}" for n in "qkv" for w in ("weight", "bias")}
        want |= {p + f"mlp.{n}_proj.weight" for n in ("gate", "up", "down")}
    assert names == want
    assert "lm_head.weight" not in DreamModel(dream_cfg(tie_word_embeddings=True)).state_dict()


def test_llada_block_by_hand():
    """One layer, recomputed from the architecture facts with plain tensor ops."""
    m = llada(2, n_layers=1, include_bias=True)
    t, b = m.model.transformer, m.model.transformer.blocks[0]
    ids = torch.randint(0, V, (2, 6))
    def norm(x, w):
        return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    x = t.wte.weight[ids]
    h = norm(x, b.attn_norm.weight)
    q = (h @ b.q_proj.weight.T + b.q_proj.bias).view(2, 6, 4, 8).transpose(1, 2)
    k = (h @ b.k_proj.weight.T + b.k_proj.bias).view(2, 6, 2, 8).transpose(1, 2)
    v = (h @ b.v_proj.weight.T + b.v_proj.bias).view(2, 6, 2, 8).transpose(1, 2)
    pos = torch.arange(6.0)[:, None] * (1000.0 ** (-torch.arange(0, 8, 2) / 8.0))[None]  # [6, 4]
    c, s = torch.cat([pos, pos], -1).cos(), torch.cat([pos, pos], -1).sin()
    rot = lambda z: z * c + torch.cat([-z[..., 4:], z[..., :4]], -1) * s
    q, k = rot(q), rot(k)
    k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)  # head h uses K/V head h // 2
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), -1) @ v
    x = x + att.transpose(1, 2).reshape(2, 6, 32) @ b.attn_out.weight.T + b.attn_out.bias
    h = norm(x, b.ff_norm.weight)
    f = torch.nn.functional.silu(h @ b.ff_proj.weight.T + b.ff_proj.bias) * (h @ b.up_proj.weight.T + b.up_proj.bias)
    x = x + f @ b.ff_out.weight.T + b.ff_out.bias
    logits = norm(x, t.ln_f.weight) @ t.ff_out.weight[:V].T + t.ff_out.bias[:V]
    close(m(ids).logits, logits, 1e-4)


def test_gqa_equals_repeated_kv_heads():
    """n_kv_heads=2 of 4 equals the full-head model whose K/V projections repeat each group."""
    g = llada(3, n_kv_heads=2)
    full = LLaDAModel(llada_cfg(n_kv_heads=4)).eval()
    sd = g.state_dict()
    for k in list(sd):
        if k.endswith(("k_proj.weight", "v_proj.weight")):
            sd[k] = sd[k].view(2, 8, 32).repeat_interleave(2, 0).reshape(32, 32)
    full.load_state_dict(sd)
    ids, am = ids_and_mask(3)
    close(full(ids, attention_mask=am).logits, g(ids, attention_mask=am).logits, 1e-4)


def test_tied_head_and_padding_rows_and_hidden():
    m = llada(4, weight_tying=True, embedding_size=72)
    ids, am = ids_and_mask(4)
    out = m(ids, attention_mask=am)
    hid = m(ids, attention_mask=am, return_hidden=True)
    assert out.logits.shape == (3, 11, V) and hid.logits is None and hid.hidden.shape == (3, 11, 32)
    W = m.get_output_embeddings().weight
    assert W.shape == (72, 32) and W is m.get_input_embeddings().weight
    close(out.logits, hid.hidden @ W[:V].T)  # hidden + head == logits
    with torch.no_grad():  # the head's padding rows never reach the logits
        m.get_input_embeddings().weight[V:] = 1e4
    assert torch.equal(m(ids, attention_mask=am).logits, out.logits)
    # untied with bias
    u = llada(5, include_bias=True)
    o, h = u(ids), u(ids, return_hidden=True).hidden
    head = u.get_output_embeddings()
    close(o.logits, h @ head.weight[:V].T + head.bias[:V])


def test_dream_shift_in_adapter_only():
    m = dream(6)
    ids, am = ids_and_mask(6)
    raw = m(ids, attention_mask=am).logits
    rm = RMModel(m)
    assert rm.logits_shift == 1 and RMModel(llada(6)).logits_shift == 0
    shifted = rm(input_ids=ids, attention_mask=am)
    assert torch.equal(shifted[:, 0], raw[:, 0]) and torch.equal(shifted[:, 1:], raw[:, :-1])
    class HFLike(torch.nn.Module):  # a trust_remote_code Dream: no attribute, config.model_type "Dream"
        config = type("C", (), {"model_type": "Dream"})()
        def forward(self, input_ids=None, attention_mask=None):
            return m(input_ids, attention_mask=attention_mask)
    assert RMModel(HFLike()).logits_shift == 1
    assert torch.equal(RMModel(HFLike())(input_ids=ids, attention_mask=am), shifted)
    assert RMModel(HFLike(), logits_shift=0).logits_shift == 0
    with pytest.raises(ValueError, match="logits_shift"):
        RMModel(m, logits_shift=2)


# --- configs -------------------------------------------------------------------------------------
def test_configs_from_dict():
    d = dict(llada_cfg().to_dict(), n_kv_heads=None, embedding_size=None, some_future_field=3, rope=True,
             block_type="llama", layer_norm_type="rms")
    c = LLaDAConfig.from_dict(d)
    assert c.n_kv_heads == 4 and c.embedding_size == V
    for bad in (dict(alibi=True), dict(rope=False), dict(block_type="sequential"), dict(layer_norm_type="default")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LLaDAConfig.from_dict({**d, **bad})
    with pytest.raises(ValueError, match="embedding_size"):
        llada_cfg(embedding_size=V - 1)
    with pytest.raises(ValueError, match="n_kv_heads"):
        llada_cfg(n_kv_heads=3)
    with pytest.raises(ValueError, match="mask_token_id"):
        llada_cfg(mask_token_id=V)
    with pytest.raises(ValueError, match="d_model"):
        llada_cfg(d_model=30)
    dd = DreamConfig.from_dict(dict(dream_cfg().to_dict(), rope_scaling=None, hidden_act="silu", bos_token_id=1))
    assert dd.num_key_value_heads == 2 and dd.to_dict()["model_type"] == "Dream"
    with pytest.raises(ValueError, match="rope_scaling"):
        DreamConfig.from_dict(dict(dream_cfg().to_dict(), rope_scaling={"type": "yarn", "factor": 4.0}))
    assert LLaDAConfig().head_dim == 128 and DreamConfig().head_dim == 128  # the 8B / 7B defaults


# --- checkpoints ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family,kw,shard", [
    ("llada", {}, None), ("llada", dict(weight_tying=True, include_bias=True), 4000),
    ("dream", {}, None), ("dream", dict(tie_word_embeddings=True), 3000),
])
def test_save_load_roundtrip(tmp_path, family, kw, shard):
    m = llada(7, **kw) if family == "llada" else dream(7, **kw)
    files = m.save_pretrained(str(tmp_path), max_shard_size=shard)
    names = sorted(os.listdir(tmp_path))
    if shard is None:
        assert names == ["config.json", "model.safetensors"]
    else:
        index = json.load(open(tmp_path / "model.safetensors.index.json"))
        shards = sorted(set(index["weight_map"].values()))
        assert len(shards) > 1 and names == sorted(["config.json", "model.safetensors.index.json", *shards])
        assert set(index["weight_map"]) == set(m.state_dict())
        assert index["metadata"]["total_size"] == sum(v.numel() * 4 for v in m.state_dict().values())
    assert files[-1].endswith("config.json")
    cfg = json.load(open(tmp_path / "config.json"))
    if family == "llada":
        assert cfg["d_model"] == 32 and cfg["n_kv_heads"] == 2 and cfg["model_type"] == "llada"
    else:
        assert cfg["hidden_size"] == 32 and cfg["num_key_value_heads"] == 2 and cfg["model_type"] == "Dream"
    loaded = load_pretrained(str(tmp_path))
    assert type(loaded) is type(m) and not loaded.training
    for (k1, v1), (k2, v2) in zip(m.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    ids, am = ids_and_mask(7)
    assert torch.equal(loaded(ids, attention_mask=am).logits, m(ids, attention_mask=am).logits)
    # re-saving in the other layout leaves no stale files
    loaded.save_pretrained(str(tmp_path), max_shard_size=None if shard else 3000)
    names = os.listdir(tmp_path)
    assert ("model.safetensors" in names) == bool(shard) and ("model.safetensors.index.json" in names) == (not shard)
    assert torch.equal(load_pretrained(str(tmp_path))(ids).logits, m(ids).logits)


def test_from_pretrained_dtype_device_meta(tmp_path):
    m = llada(8)
    m.to(torch.bfloat16).save_pretrained(str(tmp_path))
    assert json.load(open(tmp_path / "config.json"))["torch_dtype"] == "bfloat16"
    a = LLaDAModel.from_pretrained(str(tmp_path))  # dtype None: the checkpoint's (bf16), never fp32
    assert {p.dtype for p in a.parameters()} == {torch.bfloat16} and a.device.type == "cpu"
    b = LLaDAModel.from_pretrained(str(tmp_path), dtype=torch.float32, device="cpu", attn_impl="eager")
    assert {p.dtype for p in b.parameters()} == {torch.float32} and b.attn_impl == "eager"
    assert all(p.requires_grad for p in b.parameters())  # trainable as loaded
    meta = LLaDAModel(llada_cfg(), device="meta")
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    # from_pretrained builds on meta (no random init of a throw-away model)
    calls = []
    orig = LLaDAModel.init_weights
    LLaDAModel.init_weights = lambda self, *a, **k: calls.append(1)
    try:
        LLaDAModel.from_pretrained(str(tmp_path))
    finally:
        LLaDAModel.init_weights = orig
    assert calls == []
    with pytest.raises(ValueError, match="not a directory"):
        LLaDAModel.from_pretrained(str(tmp_path / "nope"))


def test_from_pretrained_is_strict(tmp_path):
    m = llada(9)
    good = str(tmp_path / "good")
    m.save_pretrained(good)
    state = load_file(os.path.join(good, "model.safetensors"))

    def variant(name, sd, cfg_dir=good):
        d = tmp_path / name
        d.mkdir()
        save_file(sd, str(d / "model.safetensors"))
        (d / "config.json").write_text(open(os.path.join(cfg_dir, "config.json")).read())
        return str(d)

    gone = "model.transformer.blocks.1.up_proj.weight"
    with pytest.raises(ValueError, match="missing tensor 'model.transformer.blocks.1.up_proj.weight'"):
        LLaDAModel.from_pretrained(variant("missing", {k: v for k, v in state.items() if k != gone}))
    with pytest.raises(ValueError, match="unexpected tensor 'model.transformer.extra'"):
        LLaDAModel.from_pretrained(variant("extra", {**state, "model.transformer.extra": torch.zeros(2)}))
    bad = dict(state)
    bad["model.transformer.blocks.0.k_proj.weight"] = torch.zeros(32, 32)
    with pytest.raises(ValueError, match=r"'model.transformer.blocks.0.k_proj.weight'.*shape \(32, 32\)"):
        LLaDAModel.from_pretrained(variant("shape", bad))
    # a Dream checkpoint is not a LLaDA one
    d = str(tmp_path / "dream")
    dream(9).save_pretrained(d)
    with pytest.raises(ValueError, match="missing tensor"):
        LLaDAModel.from_pretrained(d)
    # sharded: a shard missing, a tensor not in the index
    sh = str(tmp_path / "sharded")
    m.save_pretrained(sh, max_shard_size=5000)
    index = json.load(open(os.path.join(sh, "model.safetensors.index.json")))
    last = sorted(set(index["weight_map"].values()))[-1]
    os.rename(os.path.join(sh, last), os.path.join(sh, "moved"))
    with pytest.raises(ValueError, match=f"shard '{last}'.*does not exist"):
        LLaDAModel.from_pretrained(sh)
    os.rename(os.path.join(sh, "moved"), os.path.join(sh, last))
    files = list(index["weight_map"].values())
    first = next(f for f in files if files.count(f) > 1)
    name = next(k for k, f in index["weight_map"].items() if f == first)  # the shard holds more than this one
    del index["weight_map"][name]
    with open(os.path.join(sh, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    with pytest.raises(ValueError, match=f"unexpected tensor '{name}' in {first}"):
        LLaDAModel.from_pretrained(sh)
    os.remove(os.path.join(good, "model.safetensors"))
    with pytest.raises(ValueError, match="neither"):
        LLaDAModel.from_pretrained(good)


# --- KV cache ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_kv_cache_span_equals_full_forward(family, impl):
    model = llada(10, attn_impl=impl) if family == "llada" else dream(10, attn_impl=impl)
    ids, am = ids_and_mask(10, B=3, L=13)
    cache = KVCache()
    full = model(ids, attention_mask=am, kv_cache=cache, cache_update=True)
    assert full.kv_cache is cache and cache.length == 13 and cache.batch_size == 3 and len(cache.keys) == 2
    assert cache.keys[0].shape == (3, 2, 13, 8)
    for s, e in [(4, 8), (4, 13), (0, 5), (12, 13), (0, 13)]:  # dual-like, prefix-like, edges, full
        part = model(ids[:, s:e], attention_mask=am, kv_cache=cache, q_span=(s, e)).logits
        assert part.shape == (3, e - s, V)
        close(part[am[:, s:e]], full.logits[:, s:e][am[:, s:e]], 1e-5)
        sliced = model(ids, attention_mask=am, kv_cache=cache, q_span=(s, e))  # full-length inputs are sliced
        close(sliced.logits, part, 1e-6)
        hid = model(ids[:, s:e], attention_mask=am, kv_cache=cache, q_span=(s, e), return_hidden=True).hidden
        close(model.logits_from_hidden(hid), part, 1e-6)
    # HER-style inputs_embeds work the same
    emb = model.get_input_embeddings()(ids)
    close(model(inputs_embeds=emb[:, 4:8], attention_mask=am, kv_cache=cache, q_span=(4, 8)).logits,
          model(ids[:, 4:8], attention_mask=am, kv_cache=cache, q_span=(4, 8)).logits, 1e-6)


def test_kv_cache_stale_and_update():
    model = llada(11)
    ids, am = ids_and_mask(11, B=2, L=12)
    cache = KVCache()
    model(ids, attention_mask=am, kv_cache=cache, cache_update=True)
    before = [k.clone() for k in cache.keys]
    ids2 = ids.clone()
    ids2[:, :4] = (ids[:, :4] + 5) % V  # change the prefix: the cache is now stale for it
    full2 = model(ids2, attention_mask=am).logits
    stale = model(ids2[:, 4:8], attention_mask=am, kv_cache=cache, q_span=(4, 8)).logits
    assert (stale - full2[:, 4:8]).abs().max() > 1e-2  # the cached (old) prefix is what it attends to
    assert all(torch.equal(a, b) for a, b in zip(before, cache.keys))  # cache_update=False: untouched
    # tokens changed inside the span: the span is fresh, but deeper layers outside it attend to the old
    # span (cached), so with 2 layers this is the cache approximation ...
    ids3 = ids.clone()
    ids3[:, 5] = (ids[:, 5] + 3) % V
    approx = model(ids3[:, 4:8], attention_mask=am, kv_cache=cache, q_span=(4, 8)).logits
    assert (approx - model(ids3, attention_mask=am).logits[:, 4:8]).abs().max() > 1e-3
    # ... and with 1 layer it is exact (keys outside the span depend only on their own tokens)
    one = llada(11, n_layers=1)
    c1 = KVCache()
    one(ids, attention_mask=am, kv_cache=c1, cache_update=True)
    close(one(ids3[:, 4:8], attention_mask=am, kv_cache=c1, q_span=(4, 8)).logits,
          one(ids3, attention_mask=am).logits[:, 4:8], 1e-5)
    # cache_update on a span writes the span's fresh keys/values in place and nothing else
    upd = model(ids3[:, 4:8], attention_mask=am, kv_cache=cache, q_span=(4, 8), cache_update=True).logits
    close(upd, approx, 1e-6)
    fresh = KVCache()
    model(ids3, attention_mask=am, kv_cache=fresh, cache_update=True)
    close(cache.keys[0][:, :, 4:8], fresh.keys[0][:, :, 4:8], 1e-5)  # layer 0 of the span: its own tokens only
    close(cache.values[0][:, :, 4:8], fresh.values[0][:, :, 4:8], 1e-5)
    for a, b in zip(cache.keys, before):
        assert torch.equal(a[:, :, :4], b[:, :, :4]) and torch.equal(a[:, :, 8:], b[:, :, 8:])
    assert not torch.equal(cache.keys[1][:, :, 4:8], before[1][:, :, 4:8])


def test_kv_cache_allocate_static_and_errors():
    model = llada(12)
    ids, am = ids_and_mask(12, B=2, L=10)
    cache = KVCache.allocate(model, 2, 10)
    ptrs = [k.data_ptr() for k in cache.keys]
    full = model(ids, attention_mask=am, kv_cache=cache, cache_update=True).logits
    assert [k.data_ptr() for k in cache.keys] == ptrs and cache.keys[0].abs().sum() > 0  # copied in place
    close(model(ids[:, 3:6], attention_mask=am, kv_cache=cache, q_span=(3, 6)).logits[am[:, 3:6]],
          full[:, 3:6][am[:, 3:6]])
    with pytest.raises(ValueError, match="q_span needs a kv_cache"):
        model(ids[:, 3:6], attention_mask=am, q_span=(3, 6))
    with pytest.raises(ValueError, match="empty"):
        model(ids[:, 3:6], attention_mask=am, kv_cache=KVCache(), q_span=(3, 6))
    with pytest.raises(ValueError, match="q_span"):
        model(ids[:, 3:6], attention_mask=am, kv_cache=cache, q_span=(6, 3))
    with pytest.raises(ValueError, match="span length"):
        model(ids[:, 3:7], attention_mask=am, kv_cache=cache, q_span=(3, 6))
    with pytest.raises(ValueError, match="batch"):
        model(ids[:1, 3:6], attention_mask=am[:1], kv_cache=cache, q_span=(3, 6))
    with pytest.raises(ValueError, match="cache_update"):
        model(ids, cache_update=True)
    with pytest.raises(ValueError, match="exactly one"):
        model()


# --- decoding through generate -------------------------------------------------------------------
class HandShifted(torch.nn.Module):
    """Dream with the shift applied by hand (and no logits_shift attribute): the reference."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None):
        z = self.inner(input_ids, inputs_embeds, attention_mask).logits
        return torch.cat([z[:, :1], z[:, :-1]], 1)


def _prompts(seed, B=3, P=5):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, M, (B, P), generator=g)
    am = torch.ones(B, P, dtype=torch.long)
    am[1, :2] = 0
    am[2, :1] = 0
    return ids, am


@pytest.mark.parametrize("hist", [0, 3])
def test_generate_on_saved_checkpoints(tmp_path, hist):
    """Tiny LLaDA and Dream written in the released format, loaded, decoded (fast == reference);
    Dream through generate equals a hand-shifted reference."""
    ids, am = _prompts(hist)
    # eager statistics kernels: the subject here is the model (the Triton interpreter would dominate)
    cfg = DecodeConfig(steps=8, block_size=4, reveal_per_step=1, history_steps=hist)
    kw = dict(mask_id=M, attention_mask=am, gen_length=8, kernels="reference")
    for family, make in (("llada", llada), ("dream", dream)):
        d = str(tmp_path / family)
        make(13, **({"weight_tying": True} if family == "llada" else {})).save_pretrained(d, max_shard_size=6000)
        model = load_pretrained(d, attn_impl="sdpa")
        norm = HistoryNorm(32)
        fast = generate(model, ids, cfg, history_norm=norm, **kw)
        ref = generate(model, ids, cfg, history_norm=norm, impl="reference", **kw)
        assert torch.equal(fast.sequences, ref.sequences) and torch.equal(fast.steps, ref.steps)
        assert bool((fast.sequences[fast.gen_mask] != M).any())  # it decoded something
        if family == "dream":
            hand = generate(HandShifted(model), ids, cfg, history_norm=norm, **kw)
            assert torch.equal(hand.sequences, fast.sequences)
            unshifted = generate(RMModel(model, norm, logits_shift=0), ids, cfg, **kw)
            assert not torch.equal(unshifted.sequences, fast.sequences)  # the shift matters here


# --- an independent implementation (transformers), run non-causally with a 4-D mask ------------
def _hf_logits(hf, ids, am):
    bias = torch.zeros(ids.shape[0], 1, ids.shape[1], ids.shape[1])
    bias = bias.masked_fill(~am[:, None, None, :], torch.finfo(torch.float32).min)  # keys only, no causal part
    return hf(input_ids=ids, attention_mask=bias).logits


def test_dream_matches_transformers_qwen2():
    transformers = pytest.importorskip("transformers")
    ours = dream(14)
    c = transformers.Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, rope_theta=1000.0,
                                 rms_norm_eps=1e-6, max_position_embeddings=64, tie_word_embeddings=False)
    c._attn_implementation = "eager"
    hf = transformers.Qwen2ForCausalLM(c).eval()
    missing, unexpected = hf.load_state_dict(ours.state_dict(), strict=False)  # the names are Qwen2's
    assert not missing and not unexpected
    ids, am = ids_and_mask(14)
    with torch.no_grad():
        close(ours(ids, attention_mask=am).logits[am], _hf_logits(hf, ids, am)[am], 1e-4)


def test_llada_matches_transformers_llama():
    """LLaDA is the Llama block without the causal mask: map its names onto LlamaForCausalLM."""
    transformers = pytest.importorskip("transformers")
    ours = llada(15, embedding_size=V)
    c = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, rope_theta=1000.0,
                                 rms_norm_eps=1e-5, max_position_embeddings=64, tie_word_embeddings=False)
    c._attn_implementation = "eager"
    hf = transformers.LlamaForCausalLM(c).eval()
    rename = {"wte": "model.embed_tokens", "ln_f": "model.norm", "ff_out": "lm_head", "attn_norm": "input_layernorm",
              "ff_norm": "post_attention_layernorm", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
              "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj", "ff_proj": "mlp.gate_proj",
              "up_proj": "mlp.up_proj"}
    sd = {}
    for k, v in ours.state_dict().items():
        parts = k.split(".")[2:]  # drop "model.transformer"
        if parts[0] == "blocks":
            mod = {"ff_out": "mlp.down_proj"}.get(parts[2], rename[parts[2]])
            sd[f"model.layers.{parts[1]}.{mod}.{parts[3]}"] = v
        else:
            sd[f"{rename[parts[0]]}.{parts[1]}"] = v
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not missing and not unexpected
    ids, am = ids_and_mask(15)
    with torch.no_grad():
        close(ours(ids, attention_mask=am).logits[am], _hf_logits(hf, ids, am)[am], 1e-4)


# --- GPU (run by benchmarks/gpu.sh) --------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_cuda_backends_and_meta_load(tmp_path, family):
    make = llada if family == "llada" else dream
    make(16).to(torch.bfloat16).save_pretrained(str(tmp_path), max_shard_size=6000)
    model = load_pretrained(str(tmp_path), dtype=torch.bfloat16, device="cuda")
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ids, am = ids_and_mask(16, B=3, L=37)
    ids, am = ids.cuda(), am.cuda()
    outs = {}
    impls = ["eager", "sdpa"] + (["flash"] if __import__("importlib").util.find_spec("flash_attn") else [])
    for impl in impls:
        model.attn_impl = impl
        with torch.no_grad():
            outs[impl] = model(ids, attention_mask=am).logits.float()
            cache = KVCache()
            model(ids, attention_mask=am, kv_cache=cache, cache_update=True)
            part = model(ids[:, 8:24], attention_mask=am, kv_cache=cache, q_span=(8, 24)).logits.float()
        torch.testing.assert_close(part[am[:, 8:24]], outs[impl][:, 8:24][am[:, 8:24]], atol=5e-2, rtol=5e-2)
    for impl in impls[1:]:
        torch.testing.assert_close(outs[impl][am], outs["eager"][am], atol=5e-2, rtol=5e-2)


@pytest.mark.cuda
def test_cuda_flash_attention_equals_eager():
    pytest.importorskip("flash_attn")
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(3, 8, 29, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(3, 2, 41, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(3, 2, 41, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    mask = torch.ones(3, 41, dtype=torch.bool, device="cuda")
    mask[1, 30:] = False
    mask[2, 5:] = False
    for m in (None, mask):
        torch.testing.assert_close(attention(q, k, v, m, attn_impl="flash").float(),
                                   attention(q, k, v, m, attn_impl="eager").float(), atol=2e-2, rtol=2e-2)


# --- training --------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_trainer_takes_native_models(family):
    """The RM trainer trains a native model (``.logits`` unwrapped, Dream shifted, padded head rows)."""
    from rmkernels.training import SynthConfig, SynthData, TrainConfig, Trainer, synthesize

    Vt, Mt, L, P = 13, 12, 12, 6  # reverse-copy task
    g = torch.Generator().manual_seed(0)

    def task(n):
        src = torch.randint(0, Mt, (n, P), generator=g)
        return torch.cat([src, src.flip(1)], 1), (torch.arange(L) >= P).expand(n, L).clone()

    scfg = SynthConfig(corruption_rate=0.5, frames=5, history_steps=2)
    data = SynthData(*task(256), Mt, scfg, vocab_size=Vt, seed=0)
    held = synthesize(*task(64), None, Mt, scfg, seed=1, vocab_size=Vt)
    torch.manual_seed(0)
    if family == "llada":
        model = LLaDAModel(llada_cfg(vocab_size=Vt, embedding_size=16, mask_token_id=Mt))
    else:
        model = DreamModel(dream_cfg(vocab_size=Vt, mask_token_id=Mt))
    tr = Trainer(model, HistoryNorm(32), data, TrainConfig(lr=3e-3, batch_size=16, total_steps=30, history_steps=2,
                                                           loss_impl="reference", progress=False))
    assert tr.vocab_size == Vt
    model.eval()
    with torch.no_grad():
        logits = tr.logits(held)
        raw = model(inputs_embeds=tr.history_norm(model.get_input_embeddings().weight, held.input_ids,
                                                  held.history_ids[:, :2].contiguous(), held.history_len.clamp(max=2),
                                                  held.token_mask), attention_mask=held.attention_mask).logits
        want = raw if family == "llada" else torch.cat([raw[:, :1], raw[:, :-1]], 1)
        close(logits, want)
        before = float(tr.loss(held).total)
    for _ in range(30):
        tr.train_step()
    model.eval()
    with torch.no_grad():
        after = float(tr.loss(held).total)
    # it learns (Dream slower: its shift makes each output predict the next position)
    assert after < (0.8 if family == "llada" else 0.97) * before, (before, after)
