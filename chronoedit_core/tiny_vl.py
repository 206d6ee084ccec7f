"""Write a tiny, randomly initialised Qwen2.5-VL checkpoint: the prompt enhancer's model at toy size.

The real transformers classes (`Qwen2_5_VLForConditionalGeneration`, the Qwen2-VL image processor, a fast tokenizer
with Qwen's special tokens and a Qwen-style chat template) saved the way a Qwen-VL release is laid out, so tests and
demos run the very loading and generation code that serves Qwen2.5-VL-7B or Qwen3-VL-30B-A3B. The tokenizer is built
locally (byte-level, no merges) because nothing here can download one. Its answers are gibberish: the weights are
random. Its generation config keeps them printable (no blank or special tokens), so an answer is never empty.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen's ChatML layout, images as `<|vision_start|><|image_pad|><|vision_end|>`."""

HIDDEN = 32
PATCH = 14


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with Qwen's special tokens and chat template: every string maps to tokens."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *sorted(alphabet)])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=8192,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_image_processor() -> Qwen2VLImageProcessorPil:
    """Qwen2-VL's image processor (14 px patches, 2x2 merge), with few pixels so an image is a few dozen tokens."""
    return Qwen2VLImageProcessorPil(
        patch_size=PATCH, merge_size=2, temporal_patch_size=2, min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28
    )


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    ids = {token: int(tokenizer.convert_tokens_to_ids(token)) for token in SPECIAL_TOKENS}  # type: ignore[arg-type]
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 8192,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision = {
        "depth": 2,
        "hidden_size": HIDDEN,
        "intermediate_size": 64,
        "num_heads": 4,
        "out_hidden_size": HIDDEN,
        "patch_size": PATCH,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [1],
    }
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.suppress_tokens = _unprintable(tokenizer)
    return model


def _unprintable(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """Every token but the visible ASCII characters: random weights would otherwise often answer with blanks, an
    early end, or bytes that are no valid UTF-8."""
    return [i for i in range(len(tokenizer)) if not _visible(str(tokenizer.decode([i], skip_special_tokens=True)))]


def _visible(text: str) -> bool:
    return len(text) == 1 and text.isascii() and text.isprintable() and not text.isspace()


def write_tiny_enhancer(directory: Path, seed: int = 0) -> Path:
    """Write the tiny Qwen2.5-VL checkpoint (weights, config, tokenizer, chat template, image processor)."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    build_tiny_model(tokenizer, seed).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    build_image_processor().save_pretrained(directory)
    return directory
