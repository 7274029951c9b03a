"""Fetching inputs safely, decoding images and video with limits, encoding mp4."""

from omniflash.media.decode import VideoClip, decode_image, probe_video
from omniflash.media.fetch import FetchPolicy, fetch_bytes, fetch_to_file, is_public_address
from omniflash.media.inputs import clip_seconds, fetch_inputs

__all__ = [
    "FetchPolicy",
    "VideoClip",
    "clip_seconds",
    "decode_image",
    "fetch_bytes",
    "fetch_inputs",
    "fetch_to_file",
    "is_public_address",
    "probe_video",
]
