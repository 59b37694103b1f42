"""minicoat and the outside world: timm's CoAtNets and other resolutions.

* ``minicoat.interop.timm``: ``config(name)`` for timm's ``coatnet_0_224`` .. ``coatnet_4_224``,
  ``load_state_dict`` / ``to_state_dict`` between timm's state dicts and minicoat's trees.
* ``resize_rel_bias`` / ``resize_rel_bias_table``: a network's relative-bias tables for another
  image size, resized as timm resizes them; ``resize_opt_state`` the optimizer's moments of those
  tables (to resume training at another size); ``resize_images`` (bilinear).
* ``files``: ``.safetensors`` files both ways (``minicoat convert``).

Nothing here imports torch (or timm): state dicts are mappings of names to NumPy arrays.
"""

from . import timm  # noqa: F401  (the submodule, imported with the package)
from .resize import resize_images, resize_opt_state, resize_rel_bias, resize_rel_bias_table

# ``timm`` is a module (``from minicoat.interop import timm``), documented on its own page
__all__ = ["resize_images", "resize_opt_state", "resize_rel_bias", "resize_rel_bias_table"]
