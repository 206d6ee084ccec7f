"""Write a tiny, randomly initialised ChronoEdit checkpoint in diffusers layout.

Same classes and on-disk layout as the 14B release (`model_index.json`, `transformer/`, `text_encoder/`,
`tokenizer/`, `image_encoder/`, `image_processor/`, `vae/`, `scheduler/`), at toy sizes, so tests and the embedded
demo exercise the very loading and inference code that serves the real weights. Its images are noise: the weights
are random. The tokenizer is built locally (byte-level, no merges) because nothing here can download one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, ChronoEditPipeline, ChronoEditTransformer3DModel, UniPCMultistepScheduler
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedTokenizerFast,
    UMT5Config,
    UMT5EncoderModel,
)

from chronoedit_core.manifest import write_manifest

TEXT_DIM = 32
IMAGE_DIM = 32
CLIP_IMAGE_SIZE = 32
HEAD_DIM = 16
"""Every linear layer of the tiny blocks then has sides that are multiples of 16, so FP8 can store them all."""
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with T5's special tokens: every string maps to tokens, nothing is unknown."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *sorted(alphabet)])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def build_tiny_pipeline(seed: int = 0) -> ChronoEditPipeline:
    """The real ChronoEdit component classes at toy sizes, with weights drawn from `seed`."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=IMAGE_DIM,
            intermediate_size=64,
            projection_dim=IMAGE_DIM,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=CLIP_IMAGE_SIZE,
            patch_size=8,
        )
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": CLIP_IMAGE_SIZE}, crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE}
    )
    heads, head_dim = 2, HEAD_DIM
    transformer = ChronoEditTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=36,  # 16 noise + 4 mask + 16 condition latents, as in the 14B model
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        image_dim=IMAGE_DIM,
        added_kv_proj_dim=heads * head_dim,
        rope_max_seq_len=1024,
    )
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    pipe = ChronoEditPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        image_encoder=image_encoder,
        image_processor=image_processor,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
    )
    for component in (transformer, text_encoder, image_encoder, vae):
        component.eval()  # modules start in training mode; UMT5's dropout would make runs differ
    return pipe


TINY_LORAS = {"distill": "diffusers", "upscaler": "diffusers", "paintbrush": "wan"}
"""The adapters the presets use, as random tiny LoRAs; one in the original Wan key format to exercise its loader."""


def write_tiny_model(directory: Path, seed: int = 0) -> Path:
    """Write the tiny checkpoint, its LoRAs (`loras/*.safetensors`) and its manifest to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    build_tiny_pipeline(seed).save_pretrained(directory, safe_serialization=True)
    for index, (name, key_format) in enumerate(TINY_LORAS.items()):
        write_tiny_lora(directory / "loras" / f"{name}.safetensors", seed=seed + 100 + index, key_format=key_format)
    write_manifest(directory)
    return directory


def write_tiny_turbo_transformer(directory: Path, seed: int = 1) -> Path:
    """A second tiny transformer (other weights, same shapes) with its manifest: the stand-in for a few-step
    distilled transformer a turbo worker loads in place of the base one."""
    directory.mkdir(parents=True, exist_ok=True)
    build_tiny_pipeline(seed).transformer.save_pretrained(directory, safe_serialization=True)
    write_manifest(directory)
    return directory


def write_tiny_lora(path: Path, seed: int, key_format: str = "diffusers", rank: int = 4) -> Path:
    """A random LoRA for the tiny transformer's attention projections, in diffusers' keys or the original Wan keys."""
    generator = torch.Generator().manual_seed(seed)
    inner = 2 * HEAD_DIM  # heads x head_dim of the tiny transformer
    wan_names = {"attn1": "self_attn", "attn2": "cross_attn"}
    projections = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o"}
    tensors: dict[str, torch.Tensor] = {}
    for block in range(2):
        for attention, wan_attention in wan_names.items():
            for projection, wan_projection in projections.items():
                if key_format == "wan":
                    prefix = f"diffusion_model.blocks.{block}.{wan_attention}.{wan_projection}"
                else:
                    prefix = f"transformer.blocks.{block}.{attention}.{projection}"
                tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, inner, generator=generator) * 0.5
                tensors[f"{prefix}.lora_B.weight"] = torch.randn(inner, rank, generator=generator) * 0.5
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path
