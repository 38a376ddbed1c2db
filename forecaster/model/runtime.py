"""Where and how the network runs: the device and the torch thread pool (torch imported here,
so that nothing outside `forecaster/model/` imports it)."""

from __future__ import annotations


def resolve_device(requested: str) -> str:
    """`auto` -> cuda when torch sees a GPU, else cpu; anything else as given."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def set_threads(threads: int) -> None:
    """Size torch's intra-op thread pool (0: leave torch's choice)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
