"""Small models of our own (no download): a bidirectional mask diffusion transformer."""
from rmkernels.models.tiny_mdm import TinyMDM, TinyMDMConfig

__all__ = ["TinyMDM", "TinyMDMConfig"]
