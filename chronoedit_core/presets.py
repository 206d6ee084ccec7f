"""Job presets as data: the official steps, guidance, flow shift, frame count, LoRA set and prompt template of each
job kind and mode (../shared/DESIGN.md). Every value may be overridden per job within the API's ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

UPSCALE_TRIGGER = (
    "The user want to enhance image clarity and resolution while keeping the content identical. "
    "super-resolution, high detail, 4K clarity, same composition, natural texture."
)
SKETCH_TRIGGER = (
    "Turn the pencil sketch in the image into an actual object that is consistent with the image's content. "
    "The user wants to change the sketch to {prompt}."
)

CACHED_PROMPTS = ("", UPSCALE_TRIGGER)
"""Prompts whose text embeddings every worker computes once at start and keeps: the empty negative prompt of every
guided job, and the upscale trigger (an upscale job's whole prompt unless the user adds text)."""

DISTILL, UPSCALER, PAINTBRUSH = "distill", "upscaler", "paintbrush"
"""Adapter names a worker loads its LoRA files under."""

TURBO = "turbo"
"""The mode of a few-step distilled transformer (e.g. a guidance-free 4-step DMD distillation of ChronoEdit-14B) that a
worker loads in place of the base one (`CHRONOEDIT_TURBO_TRANSFORMER`); only such workers serve it."""


@dataclass(frozen=True)
class Preset:
    kind: str
    mode: str
    num_inference_steps: int
    guidance_scale: float
    flow_shift: float
    loras: tuple[str, ...]
    prompt_template: str = "{prompt}"

    def prompt(self, user_prompt: str) -> str:
        """The prompt the model sees. The upscale trigger takes the user's text after it, when there is any."""
        if self.kind == "upscale":
            return f"{UPSCALE_TRIGGER} {user_prompt}".strip()
        return self.prompt_template.format(prompt=user_prompt)


def _standard(kind: str, loras: tuple[str, ...], template: str = "{prompt}") -> Preset:
    return Preset(kind, "standard", 50, 5.0, 5.0, loras, template)


def _fast(kind: str, loras: tuple[str, ...], template: str = "{prompt}") -> Preset:
    """The 8-step distilled mode: the distill LoRA, no classifier-free guidance, flow shift 2."""
    return Preset(kind, "fast", 8, 1.0, 2.0, (*loras, DISTILL), template)


def _turbo(kind: str) -> Preset:
    """A few-step distilled transformer: 4 steps without guidance, the base model's flow shift; no LoRA (the
    adapters were trained on the base transformer). Edits only."""
    return Preset(kind, TURBO, 4, 1.0, 5.0, ())


PRESETS: dict[tuple[str, str], Preset] = {
    (p.kind, p.mode): p
    for p in (
        _standard("edit", ()),
        _fast("edit", ()),
        _standard("upscale", (UPSCALER,)),
        _fast("upscale", (UPSCALER,)),
        _standard("sketch", (PAINTBRUSH,), SKETCH_TRIGGER),
        _fast("sketch", (PAINTBRUSH,), SKETCH_TRIGGER),
        _turbo("edit"),
    )
}

DEFAULT_MODE = {"edit": "standard", "upscale": "standard", "sketch": "fast"}
"""Sketch-to-object is shipped with the distilled 8-step LoRA; the other kinds default to the full 50 steps."""


def preset(kind: str, mode: str | None = None) -> Preset:
    key = (kind, mode or DEFAULT_MODE[kind])
    if key not in PRESETS:
        raise ValueError(f"no preset for kind {kind!r} in mode {mode!r}; known: {sorted(PRESETS)}")
    return PRESETS[key]
