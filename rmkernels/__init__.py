"""rmkernels: kernel-accelerated Reflective Masking (RM) for mask diffusion language models.

Public API (imported lazily so `import rmkernels` stays cheap and does not pull in Triton):

- :func:`rm_stats` / :class:`RMStats`        fused per-position statistics (docs/spec.md §1)
- :func:`rm_linear_stats`                    the same statistics from the LM head's input (docs/spec.md §9)
- :func:`history_embed` / :class:`HistoryBuffer`  History Reference embeddings (docs/spec.md §3)
- :func:`generate` / :class:`DecodeConfig` / :class:`DecodeOutput`  the RM decoder (docs/spec.md §2; KV cache §8)
- :class:`RMSampler`  the decoder's step for other engines' loops (no model inside; ``docs/sampler.md``)
- :func:`llada_generate`  LLaDA's published ``generate``, drop-in (plus ``remasking="rm"``, ``cache=``)
- :func:`rm_loss` / :func:`rm_linear_loss` / :class:`RMLoss`  the post-training loss (docs/spec.md §4)
"""
from importlib import import_module

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "RMStats": "rmkernels.ops.rm_stats",
    "rm_stats": "rmkernels.ops.rm_stats",
    "rm_linear_stats": "rmkernels.ops.linear_stats",
    "history_embed": "rmkernels.ops.history_embed",
    "HistoryBuffer": "rmkernels.history",
    "HistoryNorm": "rmkernels.history",
    "DecodeConfig": "rmkernels.decode",
    "DecodeOutput": "rmkernels.decode",
    "generate": "rmkernels.decode",
    "RMSampler": "rmkernels.decode",
    "llada_generate": "rmkernels.decode.compat",
    "RMLoss": "rmkernels.ops.rm_loss",
    "rm_loss": "rmkernels.ops.rm_loss",
    "rm_linear_loss": "rmkernels.ops.linear_loss",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rmkernels' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
