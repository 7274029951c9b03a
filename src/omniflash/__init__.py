"""omniflash: a self-hostable video generation service speaking the Omni-Flash-Ext API."""

from omniflash.contract import GenerationSpec, Mode, parse_generation_request
from omniflash.errors import GenerationError, OmniflashError

__version__ = "0.1.0"

__all__ = [
    "GenerationError",
    "GenerationSpec",
    "Mode",
    "OmniflashError",
    "__version__",
    "parse_generation_request",
]
