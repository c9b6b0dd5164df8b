"""The arithmetic text task: generator and hash splits, left-to-right work, answer parsing, problem
files, the Hugging Face tokenizer, post-training data, a tiny end-to-end train-and-eval, and the
shipped checkpoints' pinned numbers."""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rmkernels.tasks.text import problems as P
from rmkernels.tasks.text.data import GEN_LENGTH, MAX_SEQ, PROMPT_WIDTH, full_rows, target_ids
from rmkernels.tasks.text.tokenizer import EOS_ID, MASK_ID, PAD_ID, VOCAB_SIZE

pytestmark = pytest.mark.usefixtures("one_thread")


# --- generator and splits ---------------------------------------------------------------------
def _split_by_hand(e: str) -> str:
    h = int(hashlib.sha256(e.encode()).hexdigest(), 16) % 10
    return "test" if h == 0 else "val" if h == 1 else "train"


def test_split_is_the_hash_rule_and_generator_respects_it():
    rng = np.random.default_rng(5)
    exprs = [P.random_expression(rng) for _ in range(3000)]
    assert all(P.split_of(e) == _split_by_hand(e) for e in exprs)
    counts = {s: sum(P.split_of(e) == s for e in exprs) for s in P.SPLITS}
    assert 200 < counts["test"] < 400 and 200 < counts["val"] < 400  # ~10% each
    for split in P.SPLITS:
        ps = P.generate_problems(split, 50, seed=3)
        assert len(set(ps)) == 50 and all(_split_by_hand(e) == split for e in ps)
        assert ps == P.generate_problems(split, 50, seed=3)  # deterministic
    assert P.generate_problems("test", 20, seed=3) != P.generate_problems("test", 20, seed=4)
    first = P.generate_problems("test", 10, seed=3)
    assert not set(first) & set(P.generate_problems("test", 10, seed=3, exclude=first))
    from rmkernels.tasks.text.train import train_expressions

    assert all(_split_by_hand(e) == "train" for e in train_expressions(300, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="split"):
        P.generate_problems("dev", 3, 0)


def test_generator_distribution_stays_in_the_grammar():
    rng = np.random.default_rng(1)
    n_ops = []
    for _ in range(2000):
        e = P.random_expression(rng)
        operands, ops = P.parse_expression(e)  # raises if outside the grammar
        n_ops.append(len(ops))
        assert len(P.work(e)) <= P.MAX_WORK_CHARS and len(e) <= P.MAX_EXPRESSION_CHARS
    assert set(n_ops) == {1, 2, 3}


# --- left-to-right evaluation and the work ------------------------------------------------------
def test_left_to_right_evaluation_and_work():
    assert P.evaluate("2+3*4") == 20  # not 14: no precedence
    assert P.evaluate("10-20*3") == -30
    assert P.evaluate("0-999-999-999") == -2997
    assert P.work("37*4+129-58") == "37*4=148;148+129=277;277-58=219;#219"
    assert P.work("5-9*2") == "5-9=-4;-4*2=-8;#-8"
    assert P.work("7+0") == "7+0=7;#7"
    longest = "100-998-998+100"
    assert len(P.work(longest)) == P.MAX_WORK_CHARS == 50 and GEN_LENGTH >= 51
    for bad in ("5", "1+2+3+4+5", "5*10", "5*1", "1000+1", "007+1", "-5+1", "1++2", "1/2", "1 + 2", ""):
        with pytest.raises(ValueError):
            P.parse_expression(bad)


def test_layout_rows():
    ids, gen = full_rows(["37*4+129-58", "1+2"])
    assert ids.shape == (2, MAX_SEQ) == (2, PROMPT_WIDTH + GEN_LENGTH)
    assert gen.sum(1).tolist() == [GEN_LENGTH, GEN_LENGTH] and not gen[:, :PROMPT_WIDTH].any()
    assert ids[1, :4].tolist() == [1, 10, 2, 13] and (ids[1, 4:PROMPT_WIDTH] == PAD_ID).all()
    w = target_ids(["1+2"])[0]
    assert (ids[1, PROMPT_WIDTH:] == torch.from_numpy(w)).all()
    assert w[:6].tolist() == [1, 10, 2, 13, 3, 14] and w[8] == EOS_ID and (w[9:] == PAD_ID).all()
    assert ids[0, PROMPT_WIDTH:PROMPT_WIDTH + 2].tolist() == ids[0, :2].tolist()  # first operand 16 positions on


# --- answer parsing -----------------------------------------------------------------------------
@pytest.mark.parametrize("text, answer", [
    ("37*4=148;#219", "219"), ("#-17", "-17"), ("#0", "0"), ("1+2=3;3", ""), ("", ""), ("#", ""),
    ("#1_2", ""), ("#12;", ""), ("#--1", ""), ("#007", ""), ("#5#6", ""), ("1=1;#4", "4"),
])
def test_parse_answer(text, answer):
    assert P.parse_answer(text) == answer


def test_answers_from_windows_stop_at_eos():
    from rmkernels.tasks.text.evaluate import answers_of

    gold = torch.from_numpy(target_ids(["37*4+129-58", "5-9*2"]))
    assert answers_of(gold) == ["219", "-8"]
    w = gold.clone()
    w[0, 33] = MASK_ID  # a mask inside the answer: no parsable answer
    w[1, :] = PAD_ID  # nothing written
    assert answers_of(w) == ["", ""]
    w = gold.clone()
    w[0, 37] = 3  # digits after <eos> are not part of the answer
    assert answers_of(w) == ["219", "-8"]


def test_consistent_work_checks_copies_not_arithmetic():
    e = "37*4+129-58"
    assert P.consistent_work(e, P.work(e))
    assert P.consistent_work(e, "37*4=140;140+129=269;269-58=211;#211")  # wrong arithmetic, right copies
    for bad in ("37*4=148;148+129=277;277-58=219;#218",  # answer is not the last result
                "37*4=148;149+129=278;278-58=220;#220",  # left operand is not the previous result
                "37*4=148;148+128=276;276-58=218;#218",  # operand not the prompt's
                "37*4=148;148-129=19;19-58=-39;#-39",  # operator not the prompt's
                "37*4=148;148+129=277;#277", "37*4=148;148+129=277;277-58=219;#219;", "", "37*4=1_8;"):
        assert not P.consistent_work(e, bad), bad


# --- problem files ------------------------------------------------------------------------------
def test_problem_files_round_trip(tmp_path):
    exprs = P.generate_problems("val", 30, seed=0)
    path = str(tmp_path / "p.txt")
    P.write_problems(path, exprs)
    got, values = P.read_problems(path)
    assert got == exprs and values == [P.evaluate(e) for e in exprs]
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"


@pytest.mark.parametrize("line, what", [
    ("1+2", "expected"), ("1+2\t3\t4", "expected"), ("1+2+\t3", "not a task expression"),
    ("5*10\t50", "single digit"), ("1+2\tthree", "integer"), ("1+2\t4", "left-to-right value 3"),
    ("2+3*4\t14", "left-to-right value 20"), ("1+2+3+4+5\t15", "not a task expression"),
])
def test_bad_problem_lines_name_their_line(tmp_path, line, what):
    path = tmp_path / "bad.txt"
    path.write_text("# a comment\n37*4+129-58\t219\n\n" + line + "\n1+1\t2\n")
    with pytest.raises(ValueError, match=rf"bad.txt, line 4: .*{what}"):
        P.read_problems(str(path))


def test_empty_and_missing_problem_files(tmp_path):
    (tmp_path / "e.txt").write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="no problems"):
        P.read_problems(str(tmp_path / "e.txt"))
    with pytest.raises(ValueError, match="does not exist"):
        P.read_problems(str(tmp_path / "missing.txt"))


def test_cli_rejects_a_bad_problem_file_with_its_line(tmp_path):
    from rmkernels.cli import main

    path = tmp_path / "bad.txt"
    path.write_text("1+2\t3\n4*3\t11\n")
    with pytest.raises(ValueError, match="line 2"):
        main(["text", "eval", "--problems", str(path), "--variant", "base", "--tokens-per-step", "4"])


# --- tokenizer ----------------------------------------------------------------------------------
def test_tokenizer_round_trip_through_pretrained_tokenizer_fast(tmp_path):
    from transformers import PreTrainedTokenizerFast

    from rmkernels.tasks.text.tokenizer import CHARS, decode_generation, encode, load_tokenizer, save_tokenizer

    shipped = load_tokenizer()
    assert isinstance(shipped, PreTrainedTokenizerFast)
    save_tokenizer(str(tmp_path))
    tok = PreTrainedTokenizerFast.from_pretrained(str(tmp_path), local_files_only=True)
    assert (tok.eos_token_id, tok.pad_token_id, tok.mask_token_id, len(tok)) == (EOS_ID, PAD_ID, MASK_ID, VOCAB_SIZE)
    assert tok.convert_tokens_to_ids(list(CHARS)) == list(range(16))
    text = "37*4+129-58=37*4=148;148+129=277;277-58=219;#219"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == [CHARS.index(c) for c in text] and tok.decode(ids) == text
    ids = tok("1<eos><pad><mask>", add_special_tokens=False)["input_ids"]
    assert ids == [1, EOS_ID, PAD_ID, MASK_ID]
    assert decode_generation(tok, [1, MASK_ID, 2, EOS_ID, 3]) == "1_2"
    assert encode(tok, ["12+3="]) == [[1, 2, 10, 3, 13]]
    with pytest.raises(ValueError, match="outside the tokenizer"):
        encode(tok, ["1/2"])
    (tmp_path / "bad").mkdir()
    with pytest.raises(ValueError, match="no tokenizer.json"):
        load_tokenizer(str(tmp_path / "bad"))


# --- post-training data -------------------------------------------------------------------------
def test_wrong_reveals_edit_only_the_history_of_wrong_positions():
    from rmkernels.tasks.text.posttrain import TextRMData
    from rmkernels.training import SynthConfig, SynthData

    ids, am = full_rows(P.generate_problems("train", 16, seed=0))
    cfg = SynthConfig(corruption_rate=None, corruption_count=(1, GEN_LENGTH), wrong_fraction=0.5, topk=4, frames=6,
                      history_steps=6)
    plain = SynthData(ids, am, MASK_ID, cfg, seed=3, vocab_size=VOCAB_SIZE)
    same = TextRMData(ids, am, cfg, seed=3, wrong_reveal_prob=0.0)
    edited = TextRMData(ids, am, cfg, seed=3, wrong_reveal_prob=1.0)
    idx = torch.arange(16)
    a, b, c = plain.fetch(idx, 2), same.fetch(idx, 2), edited.fetch(idx, 2)
    for k, v in a.tensors().items():
        assert torch.equal(v, b.tensors()[k]), k
    # the current frame's labels are untouched wherever it is past the edit; a fresh wrong reveal
    # shows up as masked in the history where the plain trajectory had the wrong token
    assert not torch.equal(a.history_ids, c.history_ids) or not torch.equal(a.input_ids, c.input_ids)
    changed = a.input_ids != c.input_ids
    assert ((c.input_ids == MASK_ID) | ~changed).all()  # edits only ever put masks
    assert (c.part[changed] == 0).all() and (c.labels[changed] == ids[changed]).all()  # masked -> reveal gold
    assert ((c.part >= 0) == am).all()


# --- tiny end-to-end ----------------------------------------------------------------------------
def test_tiny_train_and_eval_end_to_end(tmp_path):
    from rmkernels.cli import main
    from rmkernels.tasks.text.checkpoint import load_checkpoint
    from rmkernels.tasks.text.posttrain import PostTrainConfig, posttrain
    from rmkernels.tasks.text.train import PretrainConfig, pretrain

    tiny = dict(d_model=32, n_layers=1, n_heads=2, mlp_hidden_size=64)
    base = pretrain(PretrainConfig(steps=3, batch_size=4, warmup=1, eval_every=3, ckpt_every=2, val_problems=4, kernels="reference", **tiny),
                    str(tmp_path / "base"), log=lambda s: None, progress=False)
    rows = [json.loads(x) for x in open(tmp_path / "base" / "metrics.jsonl")]
    assert rows[-1]["step"] == 3 and "acc@K4" in rows[-1]
    pcfg = PostTrainConfig(steps=2, batch_size=4, warmup=1, targets=32, eval_every=2, ckpt_every=1, val_problems=4,
                           kernels="reference")
    full = posttrain("full", base, str(tmp_path / "full"), pcfg, log=lambda s: None)
    model, norm, meta = load_checkpoint(full)
    assert norm is not None and meta["decode"] == {"history_steps": 6, "history_decay": 0.5, "history_rotate": True}
    assert meta["steps"] == 2 and model.config.d_model == 32
    with pytest.raises(ValueError, match="other settings"):  # a run directory is not reused with other settings
        posttrain("full", base, str(tmp_path / "full"), PostTrainConfig(**{**pcfg.__dict__, "lr": 1e-3}),
                  log=lambda s: None)
    probs = tmp_path / "p.txt"
    P.write_problems(str(probs), P.generate_problems("test", 5, seed=0))
    out, pred = tmp_path / "e.json", tmp_path / "pred.txt"
    assert main(["text", "eval", "--problems", str(probs), "--checkpoint", full, "--variant", "full",
                 "--tokens-per-step", "8", "--json", str(out), "--predictions", str(pred), "--kernels", "reference"]) == 0
    doc = json.loads(out.read_text())
    r = doc["results"][0]
    assert doc["n"] == 5 and r["system"] == "full" and r["k"] == 8 and r["steps_budget"] == 14
    assert 1 <= r["mean_calls"] <= 14 and r["reveals_per_problem"] >= GEN_LENGTH
    lines = pred.read_text().split("\n")
    assert len(lines) == 6 and lines[-1] == ""  # one line a problem (possibly empty)
    assert all(x == "" or P.parse_answer("#" + x) == x for x in lines[:-1])


def test_batched_decoding_equals_one_problem_at_a_time():
    from rmkernels.tasks.text.checkpoint import new_model
    from rmkernels.tasks.text.evaluate import decode_config, decode_problems

    torch.manual_seed(0)
    model = new_model(d_model=32, n_layers=1, n_heads=2, mlp_hidden_size=64).eval()
    exprs = ["1+2", "37*4+129-58", "999-999-999-999", "5*3"]
    cfg = decode_config({}, "rm", 4)
    together = decode_problems(model, None, exprs, cfg, batch_size=4, kernels="reference")
    for i, e in enumerate(exprs):
        alone = decode_problems(model, None, [e], cfg, batch_size=1, kernels="reference")
        for k in ("windows", "calls", "reveals", "remasks", "replays"):
            assert torch.equal(alone[k][0], together[k][i]), (e, k)


def test_checkpoint_directory_is_replaced_whole_or_not_at_all(tmp_path):
    """A failing write leaves the old checkpoint directory intact and no temporary folder behind."""
    from rmkernels._utils import atomic_write_dir

    d = tmp_path / "ckpt"
    atomic_write_dir(d, lambda t: (Path(t) / "a.json").write_text("1"))
    atomic_write_dir(d, lambda t: (Path(t) / "b.json").write_text("2"))
    assert sorted(os.listdir(d)) == ["b.json"]

    def broken(t):
        (Path(t) / "c.json").write_text("3")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_dir(d, broken)
    assert sorted(os.listdir(d)) == ["b.json"] and sorted(os.listdir(tmp_path)) == ["ckpt"]


# --- the shipped checkpoints --------------------------------------------------------------------
SHIPPED_RESULTS = os.path.join(os.path.dirname(__file__), "..", "results", "text", "test1000")


@pytest.mark.parametrize("system", ["base_lc", "base_conf", "rm", "rm_hist", "full", "rm_hist_decay"])
def test_shipped_checkpoints_reproduce_the_reported_answers(system):
    """Each shipped model (fp16, with its tokenizer, found as package data) decodes the first 8
    shipped test problems to the graded answers its reported K = 4 evaluation recorded."""
    import tomllib
    from pathlib import Path

    from transformers import PreTrainedTokenizerFast

    from rmkernels.tasks.text.checkpoint import load_checkpoint, shipped
    from rmkernels.tasks.text.evaluate import SYSTEMS, evaluate_system, load_problems

    report = os.path.join(SHIPPED_RESULTS, f"{system}_K4.json")
    variant, sampler = SYSTEMS[system]
    path = shipped(variant)
    model, norm, meta = load_checkpoint(path)
    assert meta["stored_dtype"] == "float16" and (norm is not None) == (variant not in ("base", "rm"))
    assert PreTrainedTokenizerFast.from_pretrained(path).convert_tokens_to_ids("<mask>") == MASK_ID
    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["rmkernels.tasks.text"]
    pkg = root / "rmkernels" / "tasks" / "text"
    assert {p for p in Path(path).iterdir()} <= {p for g in globs for p in pkg.glob(g)}
    doc = json.load(open(report))
    exprs, values = load_problems(limit=8)
    _, answers, _, _ = evaluate_system(variant, sampler, 4, exprs, values, loaded=(model, norm, meta), kernels="reference")
    assert answers == doc["answers"][f"{system}@K4"][:8]
