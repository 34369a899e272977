"""calib: everything that says where a pixel looks. JPL camera models, instruments, frames, labels.

No OpenCV drawing and no dask here; ``mosaic`` imports ``calib``, never the other way round.
"""

from .errors import InputError, LabelError, ModelError
from .meta import LOCAL_LEVEL, ROVER_NAV_FRAME, SITE, FrameMeta
from .models import CAHV, CAHVOR, CAHVORE, MODEL_TYPES, model_from_components, model_from_dict

__all__ = [
    "CAHV", "CAHVOR", "CAHVORE", "MODEL_TYPES", "model_from_components", "model_from_dict",
    "FrameMeta", "LOCAL_LEVEL", "ROVER_NAV_FRAME", "SITE",
    "InputError", "LabelError", "ModelError",
]
