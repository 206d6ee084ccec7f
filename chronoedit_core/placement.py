"""Putting a loaded pipeline where its memory profile wants it: FP8 weight storage, components kept on the GPU, and
components streamed in with diffusers' group offloading.

Streaming uses diffusers' maintained hooks (`enable_group_offload` / `apply_group_offloading`): the transformer per
block (each block's weights copied onto the GPU just before it runs, the next block prefetched on a side stream,
`record_stream` so no step waits for a copy), the encoders per layer. Their weights live in pinned host memory,
packed into a few large pinned buffers (`pin`): torch's pinned-memory allocator rounds each allocation up to a power
of two, which pinning layer by layer would turn into up to 1.8x the weights' size in host memory. Offloading then
only points the parameters back at the pinned copy; nothing is copied back to the host.

On the CPU (tests) the same hooks run without streams or pinning: the placement logic and the hooks' effect on the
output are exercised, not the transfers.
"""

from __future__ import annotations

import torch
from diffusers import ChronoEditPipeline
from diffusers.hooks import apply_group_offloading
from torch import nn

from chronoedit_core import fp8
from chronoedit_core.memory import device_memory
from chronoedit_core.profiles import AUTO, PROFILES, MemoryProfile, pick, profile_named

ARENA = 1 << 30
"""Smallest pinned buffer weights are packed into (a power of two, so the allocator wastes nothing on it)."""
ALIGN = 512


def resolve_profile(name: str, device: str) -> MemoryProfile:
    """The named profile, or for `auto` the fastest that fits this GPU's memory (or this process's cap) and kind.
    Off the GPU every profile is the same memory, and `auto` keeps everything in place (`resident`)."""
    if name != AUTO:
        return profile_named(name)
    if torch.device(device).type != "cuda":
        return PROFILES["resident"]
    return pick(device_memory(device), fp8.supported(torch.device(device)))


def store_fp8(pipe: ChronoEditPipeline, profile: MemoryProfile, device: str) -> int:
    """Replace the transformer blocks' linear weights by FP8 ones, quantized on `device`, kept on the GPU or in host
    memory as the profile streams them or not. Call after the LoRA adapters are loaded (peft wraps `nn.Linear` only)."""
    home = "cpu" if profile.streams_transformer else device
    count = fp8.store_linears(pipe.transformer.blocks, compute=torch.device(device), home=home)
    if count == 0:
        raise ValueError("the transformer has no linear layer FP8 can store (sides must be multiples of 16)")
    return count


def place(pipe: ChronoEditPipeline, profile: MemoryProfile, device: str) -> None:
    """Each component where `profile` wants it. Call after compiling the blocks, so the offloading hooks wrap the
    compiled forwards from outside (dynamo cannot trace the hooks' transfers)."""
    target = torch.device(device)
    if profile.streams_transformer:
        _stream(pipe.transformer, target, per_block=True)
    else:
        pipe.transformer.to(target)
    for home, component in ((profile.text_encoder, pipe.text_encoder), (profile.image_encoder, pipe.image_encoder)):
        if home == "streamed":
            _stream(component, target, per_block=False)
        else:
            component.to(target)
    pipe.vae.to(target)
    if target.type == "cuda":
        torch.cuda.empty_cache()  # the bf16 weights FP8 replaced, and what streaming moved to the host


def _stream(module: nn.Module, device: torch.device, per_block: bool) -> None:
    """Weights in (pinned) host memory, copied onto `device` just before use, the next group prefetched."""
    on_gpu = device.type == "cuda"
    if on_gpu:
        pin(module)
    else:
        module.to("cpu")
    options = {"use_stream": on_gpu, "record_stream": on_gpu, "non_blocking": on_gpu}
    if per_block:  # diffusers models: one group per transformer block
        module.enable_group_offload(  # type: ignore[operator]
            onload_device=device, offload_type="block_level", num_blocks_per_group=1, **options
        )
    else:  # transformers models: one group per layer (the tied token embedding is one module, met once)
        apply_group_offloading(module, onload_device=device, offload_type="leaf_level", **options)


def streamed(module: nn.Module) -> bool:
    """Whether group offloading hooks manage `module`."""
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    return bool(_is_group_offload_enabled(module))


def pack(sizes: list[int], arena: int = ARENA) -> tuple[list[tuple[int, int]], list[int]]:
    """Where each tensor of `sizes` bytes goes: (buffer index, offset) per tensor, and each buffer's size. First fit,
    largest first, in buffers of at least `arena` bytes (a power of two, or one tensor's size when it is larger)."""
    unit = max(arena, 1 << (max(sizes, default=1) - 1).bit_length())
    slots: list[tuple[int, int]] = [(0, 0)] * len(sizes)
    used: list[int] = []
    for index in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        need = -(-sizes[index] // ALIGN) * ALIGN
        buffer = next((b for b, taken in enumerate(used) if taken + need <= unit), len(used))
        if buffer == len(used):
            used.append(0)
        slots[index] = (buffer, used[buffer])
        used[buffer] += need
    return slots, used


def pin(module: nn.Module) -> None:
    """Move every parameter and buffer of `module` into pinned host memory, packed (see `pack`), in place."""
    tensors = _unique_tensors(module)
    slots, sizes = pack([t.numel() * t.element_size() for t in tensors])
    buffers = [torch.empty(size, dtype=torch.uint8, pin_memory=True) for size in sizes]
    for tensor, (buffer, offset) in zip(tensors, slots, strict=True):
        nbytes = tensor.numel() * tensor.element_size()
        view = buffers[buffer][offset : offset + nbytes].view(tensor.dtype).view(tensor.shape)
        view.copy_(tensor.data)
        tensor.data = view  # the original (GPU or pageable) storage is freed here


def _unique_tensors(module: nn.Module) -> list[torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}
    for tensor in (*module.parameters(), *module.buffers()):
        seen.setdefault(id(tensor), tensor)
    return [t for t in seen.values() if t.numel() > 0]


def weight_bytes(module: nn.Module) -> dict[str, int]:
    """Bytes of `module`'s parameters and buffers by the device type they sit on now (streamed ones: `cpu`)."""
    totals: dict[str, int] = {}
    for tensor in _unique_tensors(module):
        totals[tensor.device.type] = totals.get(tensor.device.type, 0) + tensor.numel() * tensor.element_size()
    return totals
