"""napari-latentseg: variational autoencoders for medical volumes.

This module holds the version only: napari imports it at start-up, so it must not
import Qt, torch or any submodule.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
