"""HistoryBuffer: the on-device FIFO of previous states (docs/spec.md §3) against a plain Python model."""
import pytest
import torch

from rmkernels import HistoryBuffer, HistoryNorm
from rmkernels.ops.history_embed import history_embed
from rmkernels.reference.history import history_embed_reference


def run_pushes(buf, steps, V=50, gen=None):
    """Random pushes into ``buf``; returns the per-row lists of pushed states (most recent first)."""
    B, H, L = buf.ids.shape
    model = [[] for _ in range(B)]
    for _ in range(steps):
        state = torch.randint(0, V, (B, L), generator=gen).to(buf.device)
        changed = (torch.rand(B, generator=gen) < 0.6).to(buf.device)
        buf.push(state, changed)
        for b in range(B):
            if changed[b]:
                model[b] = [state[b].clone()] + model[b][: H - 1]
    return model


def assert_matches_model(buf, model):
    assert buf.lengths.tolist() == [len(m) for m in model]
    for b, states in enumerate(model):
        for j, state in enumerate(states):
            assert torch.equal(buf.ids[b, j].long(), state.long()), (b, j)


@pytest.mark.parametrize("H", [1, 3, 6])
@pytest.mark.parametrize("dtype", [torch.long, torch.int32])
def test_push_is_a_fifo_of_changed_rows(H, dtype):
    gen = torch.Generator().manual_seed(H)
    buf = HistoryBuffer(5, 7, H, dtype=dtype)
    ids_ptr, len_ptr = buf.ids.data_ptr(), buf.lengths.data_ptr()
    model = run_pushes(buf, 12, gen=gen)
    assert_matches_model(buf, model)
    assert max(len(m) for m in model) == H  # the sequence was long enough to drop old states
    assert buf.ids.data_ptr() == ids_ptr and buf.lengths.data_ptr() == len_ptr  # updated in place
    assert buf.ids.dtype == dtype and buf.lengths.dtype == torch.long


def test_push_without_mask_pushes_every_row():
    buf = HistoryBuffer(3, 4, 2)
    states = [torch.randint(0, 9, (3, 4)) for _ in range(3)]
    for s in states:
        buf.push(s)
    assert buf.lengths.tolist() == [2, 2, 2]
    assert torch.equal(buf.ids[:, 0], states[2]) and torch.equal(buf.ids[:, 1], states[1])


def test_zero_history_steps():
    buf = HistoryBuffer(2, 3, 0)
    buf.push(torch.ones(2, 3, dtype=torch.long), torch.tensor([True, False]))
    assert buf.ids.shape == (2, 0, 3) and buf.lengths.tolist() == [0, 0]


def test_reset_select_clone():
    gen = torch.Generator().manual_seed(1)
    buf = HistoryBuffer(4, 5, 3, fill=7)
    model = run_pushes(buf, 6, gen=gen)
    twin = buf.clone()
    buf.reset(torch.tensor([True, False, False, True]))
    assert buf.lengths.tolist() == [0, len(model[1]), len(model[2]), 0]
    assert (buf.ids[[0, 3]] == 7).all() and torch.equal(buf.ids[1:3], twin.ids[1:3])
    buf.reset(torch.tensor([2]))
    assert buf.lengths.tolist() == [0, len(model[1]), 0, 0]
    assert_matches_model(twin, model)  # the clone is independent
    sub = twin.select(torch.tensor([3, 1]))
    assert_matches_model(sub, [model[3], model[1]])
    sub.push(torch.zeros(2, 5, dtype=torch.long))
    assert_matches_model(twin, model)  # so is a selection
    assert_matches_model(twin.select(torch.tensor([False, True, True, False])), model[1:3])
    twin.reset()
    assert twin.lengths.tolist() == [0] * 4 and (twin.ids == 7).all()


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda b: b.push(torch.zeros(3, 5, dtype=torch.long)), "previous_state"),
        (lambda b: b.push(torch.zeros(2, 4)), "previous_state"),
        (lambda b: b.push(torch.zeros(2, 4, dtype=torch.long, device="meta")), "previous_state"),
        (lambda b: b.push(torch.zeros(2, 4, dtype=torch.long), torch.tensor([True])), "changed_rows"),
        (lambda b: b.push(torch.zeros(2, 4, dtype=torch.long), torch.tensor([0, 1])), "changed_rows"),
        (lambda b: b.reset(torch.tensor([[True, False]])), "rows"),
        (lambda b: b.select(torch.tensor([0.5])), "rows"),
        (lambda b: HistoryBuffer(2, 4, -1), "history_steps"),
        (lambda b: HistoryBuffer(2.0, 4, 1), "batch_size"),
        (lambda b: HistoryBuffer(2, 4, 1, dtype=torch.float32), "dtype"),
    ],
)
def test_bad_input_raises_value_error(call, name):
    with pytest.raises(ValueError, match=name):
        call(HistoryBuffer(2, 4, 3))


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_buffer_feeds_history_embed(impl):
    gen = torch.Generator().manual_seed(3)
    V, D = 40, 12
    buf = HistoryBuffer(4, 6, 3, dtype=torch.int32)
    model = run_pushes(buf, 2, V=V, gen=gen)
    buf.reset(torch.tensor([0]))  # row 0 without history, the others with 0..2 states
    model[0] = []
    weight = torch.randn(V, D, generator=gen)
    x = torch.randint(0, V, (4, 6), generator=gen)
    mask = torch.rand(4, 6, generator=gen) < 0.8
    norm = HistoryNorm(D)
    with torch.no_grad():
        norm.weight.normal_(1, 0.2, generator=gen)
        norm.bias.normal_(0, 0.2, generator=gen)
    out = norm(weight, x, buf.ids, buf.lengths, mask, decay=0.2, impl=impl)
    # the same input built by hand from the Python model of the FIFO
    hist = torch.zeros(4, 3, 6, dtype=torch.long)
    for b, states in enumerate(model):
        for j, state in enumerate(states):
            hist[b, j] = state
    lens = torch.tensor([len(m) for m in model])
    ref = history_embed_reference(weight, x, hist, lens, mask, decay=0.2, ln_weight=norm.weight.detach(),
                                  ln_bias=norm.bias.detach())
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    out.sum().backward()  # the HistoryNorm parameters train through the buffer's tensors
    assert norm.weight.grad is not None and norm.bias.grad is not None


@pytest.mark.cuda
def test_cuda_decoding_step_has_no_host_sync():
    V, D = 64, 128
    buf = HistoryBuffer(3, 16, 6, device="cuda")
    weight = torch.randn(V, D, device="cuda")
    x = torch.randint(0, V, (3, 16), device="cuda")
    mask = torch.ones(3, 16, dtype=torch.bool, device="cuda")
    history_embed(weight, x, buf.ids, buf.lengths, mask, check=False)  # builds the cached tables
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(8):
            x_new = torch.where(torch.rand(3, 16, device="cuda") < 0.2, torch.randint_like(x, V), x)
            buf.push(x, (x_new != x).any(1))
            x = x_new
            out = history_embed(weight, x, buf.ids, buf.lengths, mask, check=False)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    ref = history_embed_reference(weight, x, buf.ids, buf.lengths, mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
