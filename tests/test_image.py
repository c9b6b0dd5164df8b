"""The digit-image task: splits, instance files, the image model layout, training data, a tiny
end-to-end train-and-eval, the demo picture and the shipped checkpoints' pinned metrics."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from rmkernels.tasks.image import data as D  # noqa: E402
from rmkernels.tasks.image.data import (  # noqa: E402
    MASK_ID, NO_CLASS, PIXELS, SEQ_LEN, VOCAB_SIZE, load_split, make_instances, parse_instances, read_instances,
    shift_images, split_of, to_tokens, write_instances)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_splits_are_fixed_and_disjoint():
    sizes = {s: len(load_split(s)[0]) for s in D.SPLITS}
    assert sizes == {"train": 1077, "val": 360, "test": 360}
    rows = {s: set(load_split(s)[2].tolist()) for s in D.SPLITS}
    assert not (rows["train"] & rows["val"]) and not (rows["train"] & rows["test"]) and not (rows["val"] & rows["test"])
    assert all(r % 5 == 0 for r in rows["test"]) and all(r % 5 == 1 for r in rows["val"])
    assert len(rows["train"] | rows["val"] | rows["test"]) == 1797
    assert split_of([0, 1, 2, 5, 6, 9]).tolist() == ["test", "val", "train", "test", "val", "train"]
    images, labels, _ = load_split("test")
    assert images.min() >= 0 and images.max() <= 16 and set(labels.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="split"):
        load_split("dev")


def test_tokens_and_shifts():
    images, labels, _ = load_split("train")
    tok = to_tokens(images[:3], [labels[0], -1, 9])
    assert tok.shape == (3, SEQ_LEN) and tok[0, 0] == D.CLASS0 + labels[0] and tok[1, 0] == NO_CLASS
    assert tok[2, 0] == D.CLASS0 + 9 and MASK_ID == VOCAB_SIZE - 1
    shifted = shift_images(images, np.random.default_rng(0), prob=1.0)
    assert (shifted != images).any(1).mean() > 0.5
    assert np.array_equal(shifted.sum(1), images.sum(1))  # no ink leaves the frame


def test_instances_are_deterministic_and_as_specified():
    test_images, test_labels, _ = load_split("test")
    rep = make_instances("repair", n=400)
    assert np.array_equal(rep.inputs, make_instances("repair", n=400).inputs)
    assert not np.array_equal(rep.inputs, make_instances("repair", n=400, seed=1).inputs)
    k = (rep.inputs != rep.reference).sum(1)
    assert k.min() == 3 and k.max() == 12
    assert np.array_equal(rep.reference, test_images[np.arange(400) % 360]) and (rep.cond == -1).all()
    assert np.array_equal(rep.label, test_labels[np.arange(400) % 360])
    ed = make_instances("edit", n=400)
    assert np.array_equal(ed.inputs, ed.reference) and (ed.label != test_labels[np.arange(400) % 360]).all()
    assert np.array_equal(ed.cond, ed.label)
    inp = make_instances("inpaint", n=400)
    region = (inp.inputs == MASK_ID).sum(1)
    assert set(region.tolist()) == {16, 32} and np.array_equal(np.where(inp.inputs == MASK_ID, inp.reference, inp.inputs),
                                                                inp.reference)
    with pytest.raises(ValueError, match="task"):
        make_instances("denoise")


def test_instance_files_roundtrip(tmp_path):
    for task in D.TASKS:
        inst = make_instances(task, "val", 30)
        path = tmp_path / f"{task}.txt"
        write_instances(str(path), inst)
        back = read_instances(str(path))
        for f in ("inputs", "reference", "label", "cond"):
            assert np.array_equal(getattr(back, f), getattr(inst, f)), (task, f)
    line = ",".join(["0"] * 64) + "\t" + ",".join(["1"] * 64)  # two fields: label and condition unknown
    two = parse_instances([line, "", "# comment"])
    assert len(two) == 1 and two.label[0] == -1 and two.cond[0] == -1 and two.inputs.sum() == 0


@pytest.mark.parametrize("bad,match", [
    ("{x}", "expected 2-4 tab-separated fields"),
    ("{x}\t{y}\t3\t-\textra", "expected 2-4"),
    ("{short}\t{y}", "input has 63 comma-separated values"),
    ("{x}\t{y17}", "reference value 64 is '17'"),
    ("{x}\t{yM}", "reference value 64 is 'M'"),
    ("{xneg}\t{y}", "input value 1 is '-1'"),
    ("{x}\t{y}\t10", "label is '10'"),
    ("{x}\t{y}\t3\tseven", "condition is 'seven'"),
])
def test_instance_file_errors_name_the_line(bad, match):
    x = ",".join(["M"] + ["0"] * 63)
    fields = {"x": x, "y": ",".join(["0"] * 64), "short": ",".join(["0"] * 63), "y17": ",".join(["0"] * 63 + ["17"]),
              "yM": ",".join(["0"] * 63 + ["M"]), "xneg": ",".join(["-1"] + ["0"] * 63)}
    good = f"{fields['x']}\t{fields['y']}"
    lines = ["# header", good, "", bad.format(**fields), good]
    with pytest.raises(ValueError, match=rf"f\.txt:4: .*{match}"):
        parse_instances(lines, source="f.txt")
    with pytest.raises(ValueError, match="no instances"):
        parse_instances(["", "# nothing"], source="e.txt")


def test_image_model_layout():
    from rmkernels.models import TinyMDM

    m = TinyMDM(vocab_size=VOCAB_SIZE, max_len=SEQ_LEN, dim=16, depth=2, heads=2, image=8).eval()
    x = torch.randint(0, VOCAB_SIZE, (3, SEQ_LEN))
    out = m(input_ids=x)
    assert out.shape == (3, SEQ_LEN, VOCAB_SIZE)
    torch.testing.assert_close(out, m(inputs_embeds=m.get_input_embeddings()(x)))
    assert m.rel_bias.shape == (2, 2, 15 * 15 + 3) and int(m._rel.max()) == 15 * 15 + 2
    with pytest.raises(ValueError, match="65 positions"):
        m(input_ids=x[:, :64])
    with pytest.raises(ValueError, match="image"):
        TinyMDM(vocab_size=VOCAB_SIZE, max_len=64, image=8)


def test_edit_pairs_and_rm_batches():
    from rmkernels.reference.loss import PART_IGNORE, PART_KEEP, PART_MASK, PART_REVEAL
    from rmkernels.tasks.image.train import ImageMDMData, ImageRMData, nearest_by_class
    from rmkernels.training import SynthConfig

    images, labels, _ = load_split("train")
    nn = nearest_by_class(images[:200], labels[:200])
    assert (labels[:200][nn] == np.arange(10)[None, :]).all() and (nn != np.arange(200)[:, None]).all()
    mdm = ImageMDMData(images, labels, seed=3).fetch(torch.arange(32), step=5)
    assert ((mdm.part == PART_REVEAL) == (mdm.input_ids == MASK_ID)).all() and (mdm.part[:, 0] == PART_IGNORE).all()
    assert torch.equal(ImageMDMData(images, labels, seed=3).fetch(torch.arange(32), step=5).input_ids, mdm.input_ids)
    synth = SynthConfig(corruption_rate=None, corruption_count=(1, 12), wrong_fraction=0.8, topk=4, frames=6,
                        history_steps=6, wrong_ids=tuple(range(17)))
    data = ImageRMData(images, labels, synth, base_model=None, uniform_frac=1.0, edit_frac=0.5, seed=1)
    b = data.fetch(torch.arange(64), step=2)
    assert b.input_ids.shape == (64, SEQ_LEN) and (b.part[:, 0] == PART_IGNORE).all()
    assert ((b.part == PART_MASK) == ((b.input_ids != MASK_ID) & (b.input_ids != b.labels) & (b.part >= 0))).all()
    for k in (PART_REVEAL, PART_MASK, PART_KEEP):
        assert int((b.part == k).sum()) > 0
    edit_rows = b.labels[:, 0] != b.input_ids[:, 0]  # never: the slot is fixed in every frame
    assert not edit_rows.any()
    b2 = data.fetch(torch.arange(64), step=2)
    assert torch.equal(b.input_ids, b2.input_ids) and torch.equal(b.labels, b2.labels)
    with pytest.raises(ValueError, match="base_model"):
        ImageRMData(images, labels, synth, base_model=None, uniform_frac=0.5)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny base and a tiny full variant, trained for a few steps (reference kernels)."""
    from rmkernels.tasks.image.train import PostTrainConfig, PretrainConfig, posttrain, pretrain

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("image_run")
    base = pretrain(PretrainConfig(steps=12, batch_size=16, dim=16, depth=1, heads=2, eval_every=6, ckpt_every=6,
                                   warmup=2, kernels="reference"), str(out / "base"), log=lambda s: None)
    cfg = PostTrainConfig(steps=6, batch_size=16, warmup=2, eval_every=6, ckpt_every=3, kernels="reference",
                          val_repair=8, val_edit=8)
    full = posttrain("full", base, str(out / "full"), cfg, log=lambda s: None)
    return out, base, full, cfg


def test_tiny_train_is_resumable_and_logs(tiny_run):
    from rmkernels.models.checkpoint import load_checkpoint
    from rmkernels.tasks.image.train import posttrain

    out, base, full, cfg = tiny_run
    rows = [json.loads(x) for x in (out / "full" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 6 and "repair_mae_after" in rows[-1] and "edit_target_pct" in rows[-1]
    model, norm, meta = load_checkpoint(full)
    assert meta["variant"] == "full" and meta["decode"]["history_rotate"] and norm is not None
    assert meta["model_config"]["image"] == 8
    # a finished run is not trained again
    assert posttrain("full", base, str(out / "full"), cfg, log=lambda s: None) == full
    # resume: without the final files and the last trainer checkpoint, the run restarts from step 3
    # and ends with the same weights as the uninterrupted run
    import shutil

    copy = out / "full_resumed"
    shutil.copytree(out / "full", copy)
    for name in ("model.safetensors", "model.json", "ckpt/step_00000006.pt"):
        (copy / name).unlink()
    again = posttrain("full", base, str(copy), cfg, log=lambda s: None)
    m2, n2, meta2 = load_checkpoint(again)
    for a, b in zip(list(model.state_dict().values()) + [norm.weight], list(m2.state_dict().values()) + [n2.weight]):
        assert torch.equal(a, b)
    assert meta2["steps"] == 6
    from dataclasses import replace

    with pytest.raises(ValueError, match="other settings"):
        posttrain("full", base, str(out / "full"), replace(cfg, lr=1.0), log=lambda s: None)


def test_tiny_eval_every_task(tiny_run, tmp_path):
    from rmkernels.tasks.image.evaluate import ModelCache, comparisons, evaluate_system, goals, markdown

    out, base, full, _ = tiny_run
    models = ModelCache(overrides={"base": base, "full": full})
    for task, systems in (("repair", ("full", "base_conf_remask", "base_regen")), ("edit", ("full", "regen")),
                          ("inpaint", ("full", "base"))):
        inst = make_instances(task, "val", 12)
        res, per = {}, {}
        for s in systems:
            res[s], per[s], final, traj = evaluate_system(task, s, inst, models, kernels="reference", steps=4)
            assert final.shape == (12, PIXELS) and (final != MASK_ID).all()  # fill_remaining
            assert traj.shape[1:] == (12, SEQ_LEN)
        again = evaluate_system(task, "full", inst, models, kernels="reference", steps=4)[2]
        assert np.array_equal(again, evaluate_system(task, "full", inst, models, kernels="reference", steps=4)[2])
        comps = comparisons(task, "full", per)
        assert len(comps) == {"repair": 6, "edit": 2, "inpaint": 2}[task]
        table = markdown(task, res, comps, goals(task, "full", res, comps, 10.0))
        assert "verdict" in table and "| goal |" in table
        if task == "inpaint":
            assert res["full"]["changed_outside"] == 0 and res["base"]["changed_outside"] == 0
        if task == "repair":
            m = res["full"]
            assert 0 <= m["precision_pct"] <= 100 and m["mae_before"] > 0


def test_cli_eval_and_demo(tiny_run, tmp_path):
    from PIL import Image

    from rmkernels.cli import main

    out, base, full, _ = tiny_run
    inputs = tmp_path / "rep.txt"
    assert main(["image", "make-instances", "--task", "repair", "--split", "val", "--n", "10", "--out", str(inputs)]) == 0
    preds, js = tmp_path / "pred.txt", tmp_path / "r.json"
    assert main(["image", "eval", "--task", "repair", "--inputs", str(inputs), "--checkpoint", full,
                 "--base-checkpoint", base, "--kernels", "reference", "--steps", "3", "--predictions", str(preds),
                 "--json", str(js)]) == 0
    lines = preds.read_text().splitlines()
    assert len(lines) == 10 and all(len(x.split(",")) == 64 for x in lines)
    doc = json.loads(js.read_text())
    assert doc["n"] == 10 and set(doc["results"]) == {"full", "base_conf_remask", "base_regen"}
    assert (tmp_path / "r.md").exists()
    png = tmp_path / "demo.png"
    assert main(["image", "demo", "--task", "edit", "--index", "3", "--split", "val", "--checkpoint", full,
                 "--kernels", "reference", "--steps", "4", "--out", str(png)]) == 0
    img = Image.open(png)
    assert img.width >= 420 and img.height > 200
    # bad input ends the command with its message: a file's line number, a missing checkpoint
    bad = tmp_path / "bad.txt"
    bad.write_text(inputs.read_text().splitlines()[0] + "\n" + "1,2,3\t4\n")
    with pytest.raises(SystemExit, match=r"bad\.txt:2"):
        main(["image", "eval", "--task", "repair", "--inputs", str(bad), "--checkpoint", full, "--no-baselines"])
    with pytest.raises(SystemExit, match="no checkpoint for 'rm_hist_decay'"):
        main(["image", "eval", "--task", "repair", "--variant", "rm_hist_decay", "--checkpoint-dir", str(tmp_path),
              "--inputs", str(inputs), "--no-baselines"])
