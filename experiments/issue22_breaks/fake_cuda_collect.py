"""Collect tests as a CUDA host would (torch.cuda.is_available patched to True; nothing runs).

Usage: PYTHONPATH=$PWD python3 experiments/issue22_breaks/fake_cuda_collect.py TEST_FILES...
"""
import sys, torch
torch.cuda.is_available = lambda: True  # pretend to be a GPU host (collection only)
import pytest
sys.exit(pytest.main(["--co", "-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
