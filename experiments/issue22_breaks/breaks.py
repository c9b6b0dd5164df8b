"""Deliberate breaks for issue 22's hardened tests: apply one break, run its tests, restore, rerun.

Usage (from the repository root): python3 experiments/issue22_breaks/breaks.py NAME [--out DIR]
Each break is a (file, old text, new text) edit of the code under test; the tests are a pytest
selection. Writes DIR/NAME.broken.txt, DIR/NAME.restored.txt and appends DIR/log.jsonl.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

T = "tests/"
BREAKS = {
    # --- RNG: the whole 64-bit counter -------------------------------------------------------
    "rng_reference_hi": ("rmkernels/reference/rng.py",
                         "lo, hi = c & MASK32, (c >> 32) & MASK32",
                         "lo, hi = c & MASK32, (c >> 32) & MASK32 & 0",
                         [T + "test_rng.py", "-k", "reference_bits or above_bit_32 or repeat"]),
    "rng_triton_hi": ("rmkernels/ops/_triton_rng.py",
                      "hi = ((c >> 32) & 0xFFFFFFFF).to(tl.uint32)",
                      "hi = (c & 0).to(tl.uint32)",
                      [T + "test_rng.py", "-k", "triton"]),
    # --- tolerances -----------------------------------------------------------------------------
    "sampled_id_one_row": ("rmkernels/reference/rm_stats.py",
                           "        score = z / temperature + gumbel_noise(seed, row_counters(N, offset, z.device), V)",
                           "        g = gumbel_noise(seed, row_counters(N, offset, z.device), V)\n"
                           "        g[-1] = g[-1].roll(1)  # BREAK: the last row reads its neighbour column's noise\n"
                           "        score = z / temperature + g",
                           [T + "test_rm_stats.py", "-k", "gumbel_same_seed"]),
    "linear_loss_half_ce": ("rmkernels/ops/linear_loss.py",
                            "ce[s:e] = chunk_fn(z, labels[s:e], part[s:e], coef[s:e], write_grad, block_v)",
                            "ce[s:e] = chunk_fn(z, labels[s:e], part[s:e], coef[s:e], write_grad, block_v).to(hidden.dtype)",
                            [T + "test_linear_loss.py", "-k", "half"]),
    "model_positions_from_end": ("rmkernels/models/tiny_mdm.py",
                                 "h = h + self.pos[:L].to(h.dtype)",
                                 "h = h + self.pos[self.pos.shape[0] - L:].to(h.dtype)",
                                 [T + "test_models.py", "-k", "shorter"]),
    "trainer_key_bias_grad": ("rmkernels/training/trainer.py",
                              "        all_reduce_sum_([p.grad for p in self.params])\n",
                              "        all_reduce_sum_([p.grad for p in self.params])\n"
                              "        for _n, _p in self.model.named_parameters():  # BREAK: a real gradient on the key bias\n"
                              "            if _n.endswith('qkv.bias'):\n"
                              "                _p.grad[_p.numel() // 3 : 2 * _p.numel() // 3] += 1.0\n",
                              [T + "test_trainer_distributed.py", "-k", "matches_single"]),
    # --- shipped models pinned ----------------------------------------------------------------
    "full_without_her": ("rmkernels/tasks/sudoku/evaluate.py",
                         'history_steps=int(hist.get("history_steps", 0)),',
                         'history_steps=0,  # BREAK: no History Reference',
                         [T + "test_sudoku_eval.py", "-k", "pinned and full"]),
    "her_rotation_sign": ("rmkernels/reference/history.py",
                          "return torch.cat([a * cos - b * sin, a * sin + b * cos, rest], dim=-1)",
                          "return torch.cat([a * cos + b * sin, -a * sin + b * cos, rest], dim=-1)",
                          [T + "test_sudoku_eval.py", "-k", "pinned and full"]),
    # --- independent oracles ------------------------------------------------------------------
    "her_freq_base": ("rmkernels/reference/history.py",
                      "inv_freq = torch.pow(10000.0, -k / max(half, 1))",
                      "inv_freq = torch.pow(1000.0, -k / max(half, 1))",
                      [T + "test_history_embed.py", "-k", "by_hand or formula_values or cpu_matches_reference"]),
    "her_tables_swapped": ("rmkernels/ops/history_embed.py",
                           "cos, sin = her_rotation(torch.arange(1, H + 1, device=device), D)",
                           "sin, cos = her_rotation(torch.arange(1, H + 1, device=device), D)",
                           [T + "test_history_embed.py", "-k", "by_hand or formula_values"]),
    "her_decay_offset": ("rmkernels/reference/history.py",
                         "return torch.exp(-float(decay) * (d - 1).clamp(min=0))",
                         "return torch.exp(-float(decay) * d)",
                         [T + "test_history_embed.py", "-k", "by_hand or formula_values or cpu_matches_reference"]),
    "cfg_scale": ("rmkernels/decode/forward.py",
                  "return uncond + (cfg.cfg_scale + 1.0) * (cond - uncond)",
                  "return uncond + cfg.cfg_scale * (cond - uncond)",
                  [T + "test_decode.py", "-k", "decoder_logits_by_hand or cfg"]),
    "cfg_masks_padding": ("rmkernels/decode/forward.py",
                          "prompt = ~gen_mask if attention_mask is None else (~gen_mask & attention_mask)",
                          "prompt = ~gen_mask",
                          [T + "test_decode.py", "-k", "decoder_logits_by_hand"]),
    "cfg_uncond_no_history": ("rmkernels/decode/forward.py",
                              "torch.cat([history[1], history[1]]))",
                              "torch.cat([history[1], torch.zeros_like(history[1])]))",
                              [T + "test_decode.py", "-k", "decoder_logits_by_hand"]),
    "canvas_rank": ("rmkernels/decode/canvas.py",
                    "gen_rank = torch.where(gen, torch.cumsum(gen.long(), 1) - 1, -1)",
                    "gen_rank = torch.where(gen, torch.cumsum(gen.long(), 1), -1)",
                    [T + "test_decode.py", "-k", "build_canvas_by_hand"]),
    # --- Sudoku claims ------------------------------------------------------------------------
    "fingerprint_no_transpose": ("rmkernels/tasks/sudoku/grids.py",
                                 "return [min(x.tobytes(), y.tobytes()) for x, y in zip(direct, transposed)]",
                                 "return [x.tobytes() for x in direct]",
                                 [T + "test_sudoku.py", "-k", "fingerprint"]),
    "fingerprint_band_order": ("rmkernels/tasks/sudoku/grids.py",
                               "band, stack = np.sort(count(rows // 3), -1), np.sort(count(ca // 3), -1)",
                               "band, stack = count(rows // 3), np.sort(count(ca // 3), -1)",
                               [T + "test_sudoku.py", "-k", "fingerprint"]),
    "split_streams_collide": ("rmkernels/tasks/sudoku/data.py",
                              "return np.random.default_rng([int(seed), SPLITS[split]])",
                              'return np.random.default_rng([DEFAULT_SEED, SPLITS["test"]])  # BREAK: one stream',
                              [T + "test_sudoku.py", "-k", "no_shipped_test_board"]),
    "se_not_clustered": ("rmkernels/tasks/sudoku/metrics.py",
                         "clusters = grid_clusters(sol.numpy()) if clusters is None else clusters",
                         "clusters = list(range(n)) if clusters is None else clusters",
                         [T + "test_sudoku.py", "-k", "cluster_robust"]),
    "se_small_sample_factor": ("rmkernels/tasks/sudoku/metrics.py",
                               "return math.sqrt(G / (G - 1) * float((e**2).sum())) / v.numel()",
                               "return math.sqrt(float((e**2).sum())) / v.numel()",
                               [T + "test_sudoku.py", "-k", "cluster_robust"]),
    "report_no_cluster_statement": ("rmkernels/tasks/sudoku/cli.py",
                                    'boards are transforms of {ordering[0][\'clusters\']} seed grids, so the standard errors are "',
                                    'boards are independent, so the standard errors are "',
                                    [T + "test_sudoku_eval.py", "-k", "cli_eval_end_to_end"]),
}


def run_pytest(sel, out_path, timeout):
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", "--tb=short", *sel]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        text, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        text, rc = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
    dt = time.time() - t0
    with open(out_path, "w") as f:
        f.write(" ".join(cmd) + f"\n# rc={rc} seconds={dt:.1f}\n" + text)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)(?: - (.*))?$", text, re.M)
    summary = (re.findall(r"^=* ?(\d+ (?:passed|failed).*?) ?=*$", text, re.M) or [text.strip().splitlines()[-1] if text.strip() else ""])[-1]
    return {"rc": rc, "seconds": round(dt, 1), "summary": summary, "failed": [[n, (m or "")[:200]] for n, m in failed]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("name", choices=sorted(BREAKS))
    ap.add_argument("--out", default=os.environ.get("BREAKS_OUT", "results/issue22_breaks"))
    ap.add_argument("--timeout", type=int, default=900)
    args = ap.parse_args()
    path, old, new, sel = BREAKS[args.name]
    src = open(path).read()
    if src.count(old) != 1:
        sys.exit(f"{args.name}: the text to break occurs {src.count(old)} times in {path}")
    os.makedirs(args.out, exist_ok=True)
    try:
        open(path, "w").write(src.replace(old, new))
        broken = run_pytest(sel, os.path.join(args.out, f"{args.name}.broken.txt"), args.timeout)
    finally:
        subprocess.run(["git", "checkout", "--", path], check=True)
    restored = run_pytest(sel, os.path.join(args.out, f"{args.name}.restored.txt"), args.timeout)
    rec = {"name": args.name, "file": path, "old": old, "new": new, "tests": sel, "broken": broken, "restored": restored}
    with open(os.path.join(args.out, "log.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec, indent=1))


if __name__ == "__main__":
    main()
