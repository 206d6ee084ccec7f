"""Text embeddings by prompt, so the text encoder runs once per distinct prompt.

UMT5-XXL is 11 GB in bf16. The memory profiles that do not keep it on the GPU stream it in for every encoding; prompts
that come back (the empty negative prompt of every guided job, the upscale trigger, a batch's shared instruction) then
cost nothing. The embeddings are the text encoder's own output for that text, computed the way the stock pipeline
computes them (`_get_t5_prompt_embeds`, padded to 512 tokens), so a hit changes no pixel. Kept in host memory (4 MB
each in bf16), least recently used first out; `keep` prompts are never evicted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import torch
from diffusers import ChronoEditPipeline

MAX_SEQUENCE_LENGTH = 512


class PromptCache:
    def __init__(self, pipe: ChronoEditPipeline, capacity: int, keep: Iterable[str] = ()) -> None:
        self.pipe, self.capacity = pipe, capacity
        self.keep = frozenset(keep)
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, text: object) -> bool:
        return text in self._entries

    def embeds(self, text: str, device: torch.device) -> torch.Tensor:
        """[1, 512, dim] embeddings of `text` on `device`, from the cache or freshly encoded (then cached)."""
        cached = self._entries.get(text)
        if cached is not None:
            self.hits += 1
            self._entries.move_to_end(text)
            return cached.to(device, non_blocking=cached.is_pinned())
        self.misses += 1
        embeds = self.pipe._get_t5_prompt_embeds(prompt=text, max_sequence_length=MAX_SEQUENCE_LENGTH, device=device)
        self._remember(text, embeds)
        return embeds

    def preload(self, texts: Iterable[str], device: torch.device) -> None:
        """Encode `texts` now (at worker start) so no job pays for them."""
        for text in texts:
            if text not in self._entries:
                self.embeds(text, device)

    def _remember(self, text: str, embeds: torch.Tensor) -> None:
        if self.capacity <= 0 and text not in self.keep:
            return
        host = embeds.detach().to("cpu")
        self._entries[text] = host.pin_memory() if embeds.is_cuda else host
        evictable = [key for key in self._entries if key not in self.keep]
        for key in evictable[: max(0, len(evictable) - self.capacity)]:
            del self._entries[key]
