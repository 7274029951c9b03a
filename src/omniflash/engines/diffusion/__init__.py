"""The ``diffusers`` engine: open-weight video diffusion models on NVIDIA GPUs.

Which pipeline and model serve each mode is set by a recipes file
(``Settings.recipes_path`` / ``OMNIFLASH_RECIPES``); the built-in default is
``omniflash/engines/recipes.toml``.  torch and diffusers are imported only when the
engine is created, so this package imports without the ``[gpu]`` extra.
"""

from omniflash.engines.diffusion.adapters import ADAPTERS, Inputs
from omniflash.engines.diffusion.engine import INSTALL_HINT, DiffusersEngine, require_gpu_extra
from omniflash.engines.diffusion.recipe_file import load_recipes
from omniflash.engines.diffusion.recipes import FrameRule, Recipe, RecipeBook, Segment

__all__ = [
    "ADAPTERS",
    "INSTALL_HINT",
    "DiffusersEngine",
    "FrameRule",
    "Inputs",
    "Recipe",
    "RecipeBook",
    "Segment",
    "load_recipes",
    "require_gpu_extra",
]
