"""Image revision on 8 x 8 digits (scikit-learn's bundled ``load_digits``): repair, edit and
inpaint with Reflective Masking (docs/image.md)."""
from rmkernels.tasks.image.data import (
    MASK_ID,
    NO_CLASS,
    VOCAB_SIZE,
    Instances,
    load_split,
    make_instances,
    parse_instances,
    read_instances,
    write_instances,
)

__all__ = ["MASK_ID", "NO_CLASS", "VOCAB_SIZE", "Instances", "load_split", "make_instances", "parse_instances",
           "read_instances", "write_instances"]
