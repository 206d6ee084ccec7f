"""What every enhancer backend shares: the request, the interface, the project's system prompts, the chat messages
built from them, and the clean-up of the model's answer.

The system prompts are written for ChronoEdit's prompt style: one paragraph beginning "The user wants to", what to
change, what must stay identical (the product, its colours, printed text and logos), no preamble. Their digest is
part of the key under which enhancements are shared, so editing them never reuses an older answer.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

MAX_PROMPT_CHARS = 4000
"""The API's prompt limit; an answer is cut to it."""

EDIT_SYSTEM_PROMPT = """\
You write image-editing instructions for ChronoEdit, an image-editing model that follows long, precise \
instructions far better than short ones.
You are given a product photo and a shop's short instruction. Rewrite the instruction as one paragraph of 80 to 100 \
words that begins with "The user wants to".
First say exactly what to change and how the result should look (placement, colours, light, shadows, background).
Then say what must stay identical: the product itself, its shape, proportions, colours and materials, every printed \
text, label and logo, and the camera angle and framing, unless the instruction changes them.
Describe only what you see in the image; never invent products, text or brands.
Answer with the paragraph only: no preamble, no quotes, no lists, no notes."""

SKETCH_SYSTEM_PROMPT = """\
You write prompts for ChronoEdit, an image-editing model that turns a black pencil sketch drawn over a photo into a \
real object.
You are given the photo with the sketch and the name of the object the sketch should become. Describe that object \
in one sentence of at most 40 words, starting with the object itself (for example "a golden crown with red \
gems ..."): its material, colour, size relative to what surrounds it, and light and shadows that match the photo. \
Everything else in the photo stays identical.
Answer with the sentence only: no preamble, no quotes, no notes."""

SYSTEM_PROMPTS = {"edit": EDIT_SYSTEM_PROMPT, "sketch": SKETCH_SYSTEM_PROMPT}
PROMPT_DIGEST = hashlib.sha256("\n".join(SYSTEM_PROMPTS.values()).encode()).hexdigest()[:16]

_THINKING = re.compile(r"<think>.*?</think>", re.DOTALL)
_PREAMBLE = re.compile(r"^(here is|here's|sure|certainly|rewritten|enhanced)[^:\n]{0,60}:\s*", re.IGNORECASE)


class EnhancerError(Exception):
    """The enhancer failed or timed out; `message` says why (it is recorded on the job)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class EnhanceRequest:
    prompt: str
    """The user's instruction (edit) or object name (sketch)."""
    kind: str
    image: Image.Image
    """RGB, already scaled down to the enhancer's image side (`fit_image`)."""


class PromptEnhancer(Protocol):
    """A backend: turns an instruction and its image into the prompt ChronoEdit follows."""

    @property
    def name(self) -> str:
        """`local:<model folder>` or `remote:<model>`: recorded on jobs and part of the sharing key."""
        ...

    def enhance(self, request: EnhanceRequest) -> str:
        """The enhanced prompt, cleaned (`clean_answer`). Raises `EnhancerError`."""
        ...


def chat_messages(request: EnhanceRequest, image_part: dict[str, Any]) -> list[dict[str, Any]]:
    """System prompt, then the image and the instruction as the user's turn; `image_part` is the backend's way to
    carry the image (a placeholder for a local chat template, a data URL for a remote endpoint)."""
    label = "Object" if request.kind == "sketch" else "Instruction"
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPTS[request.kind]}]},
        {"role": "user", "content": [image_part, {"type": "text", "text": f"{label}: {request.prompt}"}]},
    ]


def clean_answer(text: str) -> str:
    """The model's answer as one prompt: reasoning blocks, a preamble, wrapping quotes and line breaks removed, cut
    to the API's prompt limit. Raises `EnhancerError` when nothing is left."""
    text = _THINKING.sub(" ", text)
    text = " ".join(text.split())
    text = _PREAMBLE.sub("", text).strip().strip("\"'`“”").strip()
    if not text:
        raise EnhancerError("the enhancer answered with an empty prompt")
    return text[:MAX_PROMPT_CHARS]


def fit_image(image: Image.Image, side: int) -> Image.Image:
    """An RGB copy whose long side is at most `side` (aspect kept): vision tokens grow with the pixels."""
    fitted = image.convert("RGB")
    if max(fitted.size) > side:
        fitted.thumbnail((side, side), Image.Resampling.LANCZOS)
    return fitted


def data_url(image: Image.Image) -> str:
    """The image as a JPEG `data:` URL, the form OpenAI-compatible endpoints take images in."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
