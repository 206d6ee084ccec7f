"""The local prompt enhancer: a Qwen-VL model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE) loaded with transformers
in the enhancer worker's own process, on its own GPU or the CPU. `chronoedit enhancer-worker` hands it to
`service/enhance/worker.py` when `CHRONOEDIT_ENHANCER_BACKEND=local`.

The inputs are built from the model folder's tokenizer (its chat template) and image processor. Qwen-VL processor
classes would do the same, but in transformers 5 they also require a video processor, which needs torchvision; an
enhancer reads one image, so the one thing the processor adds is done here: the image placeholder is expanded to one
token per merged patch of the image processor's grid.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer
from transformers.utils import logging as transformers_logging

from chronoedit_core.loading import Placement
from service.enhance.prompts import EnhanceRequest, EnhancerError, chat_messages, clean_answer
from service.enhance.settings import EnhancerSettings

logger = logging.getLogger(__name__)

IMAGE_PAD = "<|image_pad|>"
"""The image placeholder of Qwen-VL chat templates, repeated once per vision token."""


class LocalEnhancer:
    def __init__(self, model_dir: Path, device: str = "auto", max_new_tokens: int = 200) -> None:
        transformers_logging.disable_progress_bar()
        self.placement = Placement.resolve(device)
        self.model_dir = model_dir
        self.max_new_tokens = max_new_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        if self.tokenizer.chat_template is None:
            self.tokenizer.chat_template = _processor_chat_template(model_dir)
        self.image_processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(
            model_dir, dtype=self.placement.dtype, local_files_only=True
        )
        self.model = model.to(self.placement.device).eval()  # type: ignore[arg-type]

    @classmethod
    def from_settings(cls, settings: EnhancerSettings) -> LocalEnhancer:
        assert settings.enhancer_model_dir is not None, "EnhancerSettings checks it"
        return cls(settings.enhancer_model_dir, settings.enhancer_device, settings.enhancer_max_new_tokens)

    @property
    def name(self) -> str:
        return f"local:{self.model_dir.name}"

    def enhance(self, request: EnhanceRequest) -> str:
        try:
            inputs = self._inputs(request)
            prompt_length = inputs["input_ids"].shape[1]
            with torch.inference_mode():
                output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        except (RuntimeError, ValueError) as exc:  # out of memory, a malformed model folder
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise EnhancerError(f"{self.name}: {exc.__class__.__name__}: {exc}") from exc
        return clean_answer(str(self.tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True)))

    def _inputs(self, request: EnhanceRequest) -> dict[str, Any]:
        text = self.tokenizer.apply_chat_template(
            chat_messages(request, {"type": "image"}), tokenize=False, add_generation_prompt=True
        )
        vision = self.image_processor(images=[request.image], return_tensors="pt")
        tokens = int(vision["image_grid_thw"][0].prod()) // self.image_processor.merge_size**2
        encoded = self.tokenizer(str(text).replace(IMAGE_PAD, IMAGE_PAD * tokens, 1), return_tensors="pt")
        device = self.placement.device
        return {
            **{name: value.to(device) for name, value in encoded.items()},
            "pixel_values": vision["pixel_values"].to(device, self.placement.dtype),
            "image_grid_thw": vision["image_grid_thw"].to(device),
        }


def _processor_chat_template(model_dir: Path) -> str:
    """The chat template some Qwen-VL folders keep beside the processor rather than in the tokenizer's config."""
    jinja, as_json = model_dir / "chat_template.jinja", model_dir / "chat_template.json"
    if jinja.is_file():
        return jinja.read_text()
    if as_json.is_file():
        return str(json.loads(as_json.read_text())["chat_template"])
    raise EnhancerError(f"{model_dir} has no chat template (tokenizer_config.json, chat_template.json or .jinja)")
