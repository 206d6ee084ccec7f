"""LoRA adapters with one owner: every configured LoRA file is loaded once into the resident pipeline under its
name, and each job activates exactly the set its preset needs. Base weights are never reloaded or fused.

Both file formats diffusers reads are accepted: its own keys (`transformer.blocks.N.attn1.to_q.lora_A.weight`) and
the original Wan keys (`diffusion_model.blocks.N.self_attn.q.lora_A.weight`), which diffusers converts on load.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from diffusers import ChronoEditPipeline

from chronoedit_core.errors import ChronoEditError


class LoraError(ChronoEditError):
    code = "lora_unavailable"


class LoraSet:
    def __init__(self, pipe: ChronoEditPipeline, files: Mapping[str, Path]) -> None:
        self.pipe = pipe
        self.loaded: tuple[str, ...] = ()
        self.active: tuple[str, ...] = ()
        for name, path in files.items():
            if not Path(path).is_file():
                raise LoraError(f"LoRA {name!r}: no file at {path}")
            pipe.load_lora_weights(str(path), adapter_name=name)
            self.loaded += (name,)
        if self.loaded:
            pipe.disable_lora()

    def activate(self, names: Sequence[str]) -> None:
        """Make exactly `names` active (each at weight 1.0); an empty list runs the base model alone."""
        names = tuple(names)
        missing = [name for name in names if name not in self.loaded]
        if missing:
            raise LoraError(
                f"this worker has no LoRA {', '.join(missing)} (loaded: {', '.join(self.loaded) or 'none'})"
            )
        if names == self.active:
            return
        if names:
            self.pipe.enable_lora()
            self.pipe.set_adapters(list(names), adapter_weights=[1.0] * len(names))
        else:
            self.pipe.disable_lora()
        self.active = names
