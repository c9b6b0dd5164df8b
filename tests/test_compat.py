"""llada_generate: LLaDA's published generate (signature, return value, linear transfer schedule,
low_confidence / random remasking, CFG, EOS flags) against a readable re-implementation written
here from the algorithm's description; remasking="rm"; cache=; saved tiny checkpoints decode
through generate, llada_generate and RMSampler."""
from types import SimpleNamespace

import pytest
import torch
from test_decode_cache import M, V, make

from rmkernels import DecodeConfig, generate
from rmkernels.decode.compat import llada_generate, transfer_counts
from rmkernels.decode import RMModel, RMSampler
from rmkernels.models import load_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")
EOS, EOT = 28, 18  # stand-ins for LLaDA's 126081 / 126348 (ids this model likes to generate)


@torch.no_grad()
def llada_by_the_description(model, prompt, am, steps, gen_length, block_length, cfg_scale=0.0,
                             logits_eos_inf=False, confidence_eos_eot_inf=False):
    """The published algorithm at temperature 0, one row and one position at a time."""
    B, P = prompt.shape
    x = torch.cat([prompt, torch.full((B, gen_length), M)], 1)
    mask = None if am is None else torch.cat([am.bool(), torch.ones(B, gen_length, dtype=torch.bool)], 1)
    is_prompt = x != M
    n_blocks = gen_length // block_length
    per_block = steps // n_blocks
    for k in range(n_blocks):
        end = P + (k + 1) * block_length
        schedules = []
        for b in range(B):  # the block's masked count at its start, spread evenly, the remainder first
            n = int((x[b, end - block_length:end] == M).sum())
            schedules.append([n // per_block + (1 if i < n % per_block else 0) for i in range(per_block)])
        for i in range(per_block):
            logits = model(x, attention_mask=mask).logits
            if cfg_scale > 0:  # the same canvas with the prompt masked, run on its own
                uncond = model(torch.where(is_prompt, M, x), attention_mask=mask).logits
                logits = uncond + (cfg_scale + 1) * (logits - uncond)
            new_x = x.clone()
            for b in range(B):
                scored = []
                for j in range(end):
                    if x[b, j] != M:
                        continue
                    z = logits[b, j].clone()
                    if logits_eos_inf:
                        z[EOS] = float("-inf")
                    token = int(torch.argmax(z))
                    if confidence_eos_eot_inf:
                        z[EOS] = z[EOT] = float("-inf")
                    scored.append((float(torch.softmax(z, -1)[token]), j, token))
                scored.sort(key=lambda s: (-s[0], s[1]))
                for _, j, token in scored[: schedules[b][i]]:
                    new_x[b, j] = token
            x = new_x
    return x


def left_padded(seed, B=3, P=5):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, M, (B, P), generator=g)
    am = torch.ones(B, P, dtype=torch.long)
    am[1, :2] = 0
    am[2, :4] = 0
    ids[am == 0] = 0  # a pad token
    return ids, am


def test_transfer_counts_linear_schedule():
    assert transfer_counts(torch.tensor([10, 3, 0, 8]), 4).tolist() == [[3, 3, 2, 2], [1, 1, 1, 0], [0, 0, 0, 0],
                                                                       [2, 2, 2, 2]]


@pytest.mark.parametrize("mask_wins,kw", [
    (True, dict(steps=8, gen_length=8, block_length=4)),
    (False, dict(steps=6, gen_length=12, block_length=4, cfg_scale=1.0)),
    (False, dict(steps=4, gen_length=8, block_length=8, logits_eos_inf=True, confidence_eos_eot_inf=True)),
])
def test_llada_generate_equals_the_published_algorithm(mask_wins, kw):
    model = make("llada", 1)
    # mask_wins: the mask is the argmax at some positions (about 10%), which are "transferred" as the mask
    model.offset, model.k = (-1.0, 1.05) if mask_wins else (-50.0, 0.0)
    prompt, am = left_padded(1)
    ours = llada_generate(model, prompt, am, mask_id=M, eos_id=EOS, eot_id=EOT, **kw)
    ref = llada_by_the_description(model, prompt, am, **kw)
    assert ours.shape == (3, 5 + kw["gen_length"]) and ours.dtype == torch.int64
    assert torch.equal(ours, ref)
    assert torch.equal(ours[:, :5], prompt)
    plain = llada_generate(model, prompt, am, mask_id=M, eos_id=EOS, eot_id=EOT,
                           **{k: v for k, v in kw.items() if not k.endswith("_inf")})
    if kw.get("logits_eos_inf"):
        assert not bool((ours[:, 5:] == EOS).any()) and bool((plain[:, 5:] == EOS).any())
    assert bool((ours[:, 5:] == M).any()) == mask_wins and bool((ours[:, 5:] != M).any())


def test_llada_generate_random_remasking_follows_the_schedule():
    """``random``: the number of positions unmasked per step follows the linear schedule."""
    model = make("llada", 2)
    model.offset, model.k = -50.0, 0.0  # the mask never wins: every transfer reveals a token
    seen = []

    class Recorder(torch.nn.Module):  # a trust_remote_code-style object: .logits on its output
        def forward(self, input_ids, attention_mask=None):
            seen.append(input_ids.clone())
            return SimpleNamespace(logits=model(input_ids, attention_mask=attention_mask).logits)

    prompt, am = left_padded(2)
    out = llada_generate(Recorder(), prompt, am, steps=6, gen_length=10, block_length=5, remasking="random",
                         mask_id=M, generator=torch.Generator().manual_seed(0))
    masks = [int((s == M).sum(1)[0]) for s in seen] + [int((out == M).sum(1)[0])]
    assert masks == [10, 8, 6, 5, 3, 1, 0]  # block 1: 2, 2, 1 of 5; block 2: the same
    seen.clear()
    again = llada_generate(Recorder(), prompt, am, steps=6, gen_length=10, block_length=5, remasking="random",
                           mask_id=M, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(out, again)
    sampled = llada_generate(model, prompt, am, steps=6, gen_length=10, block_length=5, temperature=1.0, mask_id=M,
                             generator=torch.Generator().manual_seed(0))
    assert not bool((sampled == M).any())


def test_llada_generate_rm_and_cache():
    model = make("llada", 3)
    prompt, am = left_padded(3)
    kr = dict(kernels="reference")  # eager statistics (the Triton interpreter is slow under pytest)
    out = llada_generate(model, prompt, am, steps=8, gen_length=8, block_length=4, remasking="rm", mask_id=M, **kr)
    cfg = DecodeConfig(steps=8, block_size=4, reveal_per_step=1, history_steps=0)
    ref = generate(model, prompt, cfg, mask_id=M, attention_mask=am, gen_length=8, **kr)
    assert torch.equal(out[:, :5], prompt) and torch.equal(out[:, 5:], ref.sequences[ref.gen_mask].view(3, 8))
    rm_dual = llada_generate(model, prompt, am, steps=8, gen_length=8, block_length=4, remasking="rm", mask_id=M,
                             cache="dual", **kr)
    ref_dual = generate(model, prompt, cfg, mask_id=M, attention_mask=am, gen_length=8, cache="dual", **kr)
    assert torch.equal(rm_dual[:, 5:], ref_dual.sequences[ref_dual.gen_mask].view(3, 8))
    # low_confidence with a cache refreshed every step is the uncached decode; without, it runs too
    model.offset, model.k = -50.0, 0.0
    kw = dict(steps=6, gen_length=12, block_length=4, mask_id=M, cfg_scale=0.5)
    plain = llada_generate(model, prompt, am, **kw)
    assert torch.equal(llada_generate(model, prompt, am, cache="dual", cache_refresh=1, **kw), plain)
    assert torch.equal(llada_generate(model, prompt, am, cache="prefix", cache_refresh=1, **kw), plain)
    dual = llada_generate(model, prompt, am, cache="dual", **kw)
    assert dual.shape == plain.shape and torch.equal(dual[:, :5], prompt) and not bool((dual == M).any())
    assert not torch.equal(dual, plain)  # the cache approximation changes something here


def test_llada_generate_bad_arguments():
    model = make("llada", 4)
    prompt, am = left_padded(4)
    for kw, name in ((dict(gen_length=10, block_length=4), "block_length"),
                     (dict(steps=3, gen_length=8, block_length=4), "steps"),
                     (dict(remasking="top"), "remasking"), (dict(cache="full"), "cache"),
                     (dict(temperature=-1.0), "temperature"), (dict(cfg_scale=-1.0), "cfg_scale"),
                     (dict(attention_mask=am[:, :3]), "attention_mask"), (dict(steps=0), "steps"),
                     (dict(history_steps=2), "remasking='rm'"),
                     (dict(logits_eos_inf=True, eos_id=V), "eos_id")):
        args = dict(steps=4, gen_length=4, block_length=4, mask_id=M)
        args.update(kw)
        with pytest.raises(ValueError, match=name):
            llada_generate(model, prompt, **args)
    with pytest.raises(ValueError, match="prompt"):
        llada_generate(model, prompt.float(), mask_id=M)


def test_saved_checkpoints_decode_through_every_api(tmp_path):
    """Tiny LLaDA and Dream written in the released format, loaded with from_pretrained, decoded by
    generate (with a cache), llada_generate and RMSampler."""
    prompt, am = left_padded(5)
    for family in ("llada", "dream"):
        d = str(tmp_path / family)
        make(family, 5).save_pretrained(d, max_shard_size=8000)
        model = load_pretrained(d, attn_impl="sdpa")
        cfg = DecodeConfig(steps=8, block_size=4, reveal_per_step=1, history_steps=0)
        out = generate(model, prompt, cfg, mask_id=M, attention_mask=am, gen_length=8, cache="dual",
                       kernels="reference")
        assert bool((out.sequences[out.gen_mask] != M).any())
        lg = llada_generate(model, prompt, am, steps=8, gen_length=8, block_length=4, mask_id=M, cache="prefix")
        assert lg.shape == (3, 13) and not bool((lg[:, 5:] == M).all())
        x = torch.cat([prompt, torch.full((3, 8), M)], 1)
        full_am = torch.cat([am, torch.ones(3, 8, dtype=torch.long)], 1)
        sampler = RMSampler(cfg, M, kernels="reference")
        state = sampler.init(x, x == M, steps=8)
        rm = RMModel(model)
        for _ in range(8):
            x, done = sampler.step(rm(input_ids=x, attention_mask=full_am), x, state)
        assert bool((x[:, 5:] != M).any()) and torch.equal(x[:, :5], prompt)
