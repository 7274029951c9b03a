"""Tiny random-weight video pipelines, saved the way a real model folder is.

They load through the same ``from_pretrained`` path as a downloaded model, run in a
fraction of a second on a CPU at 64–128 px, and produce noise: they test plumbing,
never quality.
"""

from __future__ import annotations

import importlib
import string
from pathlib import Path
from typing import Any

__all__ = ["LTX_SIZE", "TINY_T5", "WAN_SIZE", "build_all", "recipes_toml"]

# Wan needs sides in multiples of 16 and 4k+1 frames; LTX multiples of 32 and 8k+1.
WAN_SIZE = (64, 48)
LTX_SIZE = (64, 32)
# The text encoders of both families: a T5 of 2 layers of width 32.
TINY_T5: dict[str, Any] = dict(
    d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8
)


def _lib(name: str) -> Any:
    """diffusers and transformers, untyped: their constructors are not annotated."""
    return importlib.import_module(name)


def _tokenizer() -> Any:
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -5.0) for c in chars] + [("▁" + c, -4.0) for c in chars]
    return _lib("transformers").T5Tokenizer(vocab=pieces, extra_ids=0)


def _wan_vae(latent: int) -> Any:
    """Wan 2.1's VAE (16 latent channels, 8× spatial), or Wan 2.2 TI2V-5B's layout.

    The Wan 2.2 VAE has 48 latent channels, residual blocks and a 2×2 patch: 16× spatial
    compression in all.
    """
    diffusers = _lib("diffusers")
    common: dict[str, Any] = dict(
        base_dim=3, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    if latent == 16:
        return diffusers.AutoencoderKLWan(z_dim=16, **common).eval()
    return diffusers.AutoencoderKLWan(
        z_dim=latent,
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_spatial=16,
        latents_mean=[0.0] * latent,
        latents_std=[1.0] * latent,
        **common,
    ).eval()


def _wan_components(
    tok: Any, *, in_channels: int = 16, latent: int = 16, vace: bool = False
) -> dict[str, Any]:
    """Wan 2.1 (``latent=16``) or Wan 2.2 TI2V-5B (``latent=48``) components.

    Wan 2.2 TI2V's folder says ``expand_timesteps``: its image-to-video puts the first
    frame's latent in place of the noise instead of adding channels, so one transformer
    serves ``WanPipeline`` and ``WanImageToVideoPipeline``.
    """
    import torch

    diffusers, transformers = _lib("diffusers"), _lib("transformers")
    torch.manual_seed(0)
    text_encoder = transformers.UMT5EncoderModel(
        transformers.UMT5Config(vocab_size=len(tok), **TINY_T5)
    ).eval()
    vae = _wan_vae(latent)
    kwargs: dict[str, Any] = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=in_channels,
        out_channels=latent,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,
    )
    if vace:
        kwargs["num_layers"] = 3
        transformer = diffusers.WanVACETransformer3DModel(
            **kwargs, vace_layers=[0, 2], vace_in_channels=96
        )
    else:
        transformer = diffusers.WanTransformer3DModel(**kwargs)
    return {
        "tokenizer": tok,
        "text_encoder": text_encoder,
        "vae": vae,
        "scheduler": diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        "transformer": transformer.eval(),
    }


def _ltx_components(tok: Any) -> dict[str, Any]:
    import torch

    diffusers, transformers = _lib("diffusers"), _lib("transformers")
    torch.manual_seed(0)
    transformer = diffusers.LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=1,
        caption_channels=32,
    ).eval()
    vae = diffusers.AutoencoderKLLTXVideo(
        latent_channels=8,
        block_out_channels=(8,) * 4,
        decoder_block_out_channels=(8,) * 4,
        layers_per_block=(1,) * 5,
        decoder_layers_per_block=(1,) * 5,
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4,
        timestep_conditioning=False,
        patch_size=4,
        patch_size_t=1,
    ).eval()
    text_encoder = transformers.T5EncoderModel(
        transformers.T5Config(vocab_size=len(tok), **TINY_T5)
    ).eval()
    return {
        "tokenizer": tok,
        "text_encoder": text_encoder,
        "vae": vae,
        "scheduler": diffusers.FlowMatchEulerDiscreteScheduler(),
        "transformer": transformer,
    }


def _depth_model(folder: Path) -> None:
    """A Depth Anything (V2 layout) with a 4-layer DINOv2 of width 16, and its processor."""
    import torch

    transformers = _lib("transformers")
    torch.manual_seed(0)
    backbone = transformers.Dinov2Config(
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=28,
        patch_size=14,
        out_indices=[1, 2, 3, 4],
        reshape_hidden_states=False,
    )
    config = transformers.DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=16,
        neck_hidden_sizes=[8, 8, 8, 8],
        fusion_hidden_size=8,
        head_hidden_size=8,
        patch_size=14,
    )
    transformers.DepthAnythingForDepthEstimation(config).eval().save_pretrained(folder)
    transformers.DPTImageProcessorPil(
        size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14
    ).save_pretrained(folder)


def build_all(root: Path) -> dict[str, Path]:
    """Save every tiny pipeline under ``root``; returns folder by name."""
    diffusers = _lib("diffusers")
    tok = _tokenizer()
    names = ("wan-t2v", "wan-i2v", "wan-vace", "wan22-ti2v", "ltx", "depth")
    folders = {name: root / name for name in names}
    diffusers.WanPipeline(**_wan_components(tok)).save_pretrained(folders["wan-t2v"])
    # Wan 2.2 style image-to-video: no CLIP image encoder, 16 + 4 + 16 input channels.
    diffusers.WanImageToVideoPipeline(
        **_wan_components(tok, in_channels=36), image_processor=None, image_encoder=None
    ).save_pretrained(folders["wan-i2v"])
    diffusers.WanVACEPipeline(**_wan_components(tok, vace=True)).save_pretrained(
        folders["wan-vace"]
    )
    diffusers.WanPipeline(
        **_wan_components(tok, in_channels=48, latent=48), expand_timesteps=True
    ).save_pretrained(folders["wan22-ti2v"])
    # One folder serves LTXPipeline and LTXConditionPipeline: same components.
    diffusers.LTXConditionPipeline(**_ltx_components(tok)).save_pretrained(folders["ltx"])
    _depth_model(folders["depth"])
    return folders


def recipes_toml(folders: dict[str, Path], **overrides: str) -> str:
    """A recipes file for the tiny Wan models (2 steps, 64×48 native, 16 fps, 17 frames max)."""
    w, h = WAN_SIZE
    wan_common = f"""
steps = 2
guidance = 1.0
dtype = "float32"
fps = 16
frames = "4k+1"
max_frames = 17
multiple = 16
pixels = 3072
sizes = {{ "16:9" = [{w}, {h}], "9:16" = [{h}, {w}], "1:1" = [48, 48] }}
"""
    text = f"""
device = "cpu"

[modes]
text = "{overrides.get("text", "t2v")}"
frame = "{overrides.get("frame", "i2v")}"
reference = "{overrides.get("reference", "vace")}"
video = "{overrides.get("video", "vace")}"

[recipes.t2v]
pipeline = "WanPipeline"
model = "{folders["wan-t2v"]}"
inputs = []
continue_with = "i2v"
{wan_common}
[recipes.i2v]
pipeline = "WanImageToVideoPipeline"
model = "{folders["wan-i2v"]}"
inputs = ["image"]
{wan_common}
[recipes.vace]
pipeline = "WanVACEPipeline"
model = "{folders["wan-vace"]}"
inputs = ["reference_images", "video_mask"]
{wan_common}
"""
    return text
