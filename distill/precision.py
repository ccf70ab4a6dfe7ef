"""Numeric precision: the one list of precisions and the one autocast helper of the package.

    "auto"  bf16 where the GPU supports it, fp16 on older GPUs
    "bf16"  bf16 autocast (fp16 on GPUs without bf16)
    "fp16"  fp16 autocast (the trainer adds loss scaling)
    "fp32"  no autocast: reported scores are computed this way, as the IBKD authors do
CPU always runs plain fp32, whatever is asked. Recipes (`train.precision`), `distill cache
--precision`, `Encoder.encode` and the trainer all take these names. Importing this module does
not import torch (recipes are checked without it); `autocast_for` does.
"""

from __future__ import annotations

from contextlib import nullcontext

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def autocast_for(device, precision: str = "auto"):
    """The autocast context for a precision on a device (a torch.device or its name: "cuda",
    "cuda:1", "cpu"); a plain context on CPU or for fp32."""
    import torch

    from distill.errors import DistillError

    if precision not in PRECISIONS:
        raise DistillError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if torch.device(device).type != "cuda" or precision == "fp32":
        return nullcontext()
    if precision in ("auto", "bf16") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cuda", dtype=torch.float16)
