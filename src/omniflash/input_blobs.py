"""A task's inputs kept as blobs: the ``blob:`` references a spec holds instead of data,
and the labels that name a task's inputs (``image_urls[0]``, ``video_urls[0]``).

At submit the API's intake (``omniflash.api.intake``) stores inline images and this
server's uploads as blobs and puts ``blob:inputs/…`` in their place.  Workers download
these blobs before the engine runs (``omniflash.worker.source``); the sweep deletes them
with the task's other files.  Light on purpose (no imaging libraries, no API): workers
and the API both import it.
"""

from __future__ import annotations

from omniflash.contract import GenerationSpec

__all__ = [
    "BLOB_SCHEME",
    "VIDEO_LABEL",
    "blob_inputs",
    "image_label",
]

VIDEO_LABEL = "video_urls[0]"


def image_label(index: int) -> str:
    return f"image_urls[{index}]"


BLOB_SCHEME = "blob:"
"""An input URL ``blob:inputs/…`` names a blob the server stored at submit."""


def blob_inputs(spec: GenerationSpec) -> dict[str, str]:
    """The inputs stored as blobs, by label: ``{"image_urls[0]": "inputs/…/0.png", …}``."""
    found = {
        image_label(i): url[len(BLOB_SCHEME) :]
        for i, url in enumerate(spec.image_urls)
        if url.startswith(BLOB_SCHEME)
    }
    if spec.video_url and spec.video_url.startswith(BLOB_SCHEME):
        found[VIDEO_LABEL] = spec.video_url[len(BLOB_SCHEME) :]
    return found
