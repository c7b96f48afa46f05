"""Cartoon avatars from DCGAN models written once in burn (Rust).

>>> import avatar
>>> generator = avatar.AvatarGenerator(size="small", device="cpu")
>>> image = generator.generate(seed="alice", transparent=True)  # PIL.Image.Image, 96x96 RGBA
"""

from ._errors import (
    AvatarError,
    AvatarIOError,
    BackendNotCompiledError,
    CancelledError,
    InvalidOptionError,
    WeightsError,
)
from ._native import (
    MAX_BATCH,
    AvatarGenerator,
    BackgroundRemover,
    FaceAnalysis,
    InstantID,
    SafetyChecker,
    StableDiffusion,
    VqganClip,
    __version__,
)

__all__ = [
    "MAX_BATCH",
    "AvatarError",
    "AvatarGenerator",
    "AvatarIOError",
    "BackgroundRemover",
    "BackendNotCompiledError",
    "CancelledError",
    "FaceAnalysis",
    "InstantID",
    "InvalidOptionError",
    "SafetyChecker",
    "StableDiffusion",
    "VqganClip",
    "WeightsError",
    "__version__",
]
