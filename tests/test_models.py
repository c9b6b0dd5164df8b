"""TinyMDM: the plain-sequence and the board-structured (``grid``) layouts."""
import pytest
import torch

from rmkernels.models import TinyMDM, TinyMDMConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _grid_model(**kw):
    torch.manual_seed(0)
    return TinyMDM(TinyMDMConfig(vocab_size=10, max_len=81, dim=16, depth=2, heads=2, grid=9, **kw)).eval()


def test_grid_relations_match_sudoku_units():
    m = _grid_model()
    rel = m._rel  # [81, 81]
    for i in range(81):
        for j in range(81):
            ri, ci, rj, cj = i // 9, i % 9, j // 9, j % 9
            same_box = (ri // 3, ci // 3) == (rj // 3, cj // 3)
            want = 0 if i == j else 1 if ri == rj else 2 if ci == cj else 3 if same_box else 4
            assert rel[i, j] == want, (i, j)


def test_grid_model_is_equivariant_under_a_band_permutation():
    """Relabelling rows by a permutation that keeps boxes (swap two rows of a band) and permuting the
    inputs the same way permutes the outputs when the row embeddings are permuted along: the model
    sees structure only through row/column/box identities."""
    m = _grid_model()
    with torch.no_grad():  # make rows 0 and 1 share an embedding so swapping them is a symmetry
        m.pos_rcb[0, 1] = m.pos_rcb[0, 0]
    x = torch.randint(0, 10, (3, 81))
    perm = torch.arange(81).view(9, 9)[[1, 0, 2, 3, 4, 5, 6, 7, 8]].reshape(-1)
    out, out_p = m(input_ids=x), m(input_ids=x[:, perm])
    torch.testing.assert_close(out[:, perm], out_p, atol=1e-5, rtol=1e-5)


def test_grid_model_embeds_path_matches_ids_and_checks_length():
    m = _grid_model()
    x = torch.randint(0, 10, (2, 81))
    torch.testing.assert_close(m(input_ids=x), m(inputs_embeds=m.get_input_embeddings()(x)))
    with pytest.raises(ValueError, match="81 positions"):
        m(input_ids=x[:, :80])
    with pytest.raises(ValueError, match="grid"):
        TinyMDM(vocab_size=10, max_len=80, grid=9)


def test_grid_checkpoint_roundtrip(tmp_path):
    from rmkernels.tasks.sudoku.checkpoint import load_checkpoint, save_checkpoint

    m = _grid_model()
    path = save_checkpoint(str(tmp_path / "m.safetensors"), m, {"kind": "test"})
    m2, _, meta = load_checkpoint(path)
    assert meta["model_config"]["grid"] == 9
    x = torch.randint(0, 10, (2, 81))
    torch.testing.assert_close(m(input_ids=x), m2(input_ids=x))


def test_plain_model_accepts_shorter_sequences():
    """A sequence shorter than max_len is the same as that sequence padded to max_len with the
    padding masked out (absolute positions 0..L-1, padded keys get no attention)."""
    m = TinyMDM(vocab_size=7, max_len=12, dim=16, depth=2, heads=2).eval()
    x = torch.randint(0, 7, (2, 5))
    out = m(input_ids=x)
    assert out.shape == (2, 5, 7)
    padded = torch.cat([x, torch.randint(0, 7, (2, 7))], 1)
    am = (torch.arange(12) < 5).expand(2, 12)
    # the same math; only the attention's float summation order differs (exp(-inf) adds exact zeros)
    torch.testing.assert_close(m(input_ids=padded, attention_mask=am)[:, :5], out, atol=1e-6, rtol=1e-6)
    # and it is not a constant: the padded tokens, unmasked, change the result
    assert not torch.allclose(m(input_ids=padded)[:, :5], out, atol=1e-3)
