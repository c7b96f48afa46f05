"""Type stubs of the Rust extension module."""

from os import PathLike
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple, Union, overload

import numpy as np
import numpy.typing as npt
from PIL.Image import Image

__version__: str
MAX_BATCH: int

Seed = Union[int, str]
Format = Literal["png", "webp", "jpeg", "jpg"]

class AvatarGenerator:
    """A DCGAN avatar generator. Thread-safe; inference releases the GIL."""

    def __init__(
        self,
        size: Literal["small", "large"] = "small",
        device: str = "cpu",
        weights: Optional[Union[str, PathLike[str]]] = None,
    ) -> None: ...
    @property
    def resolution(self) -> int: ...
    @property
    def size(self) -> Optional[Literal["small", "large"]]: ...
    @property
    def device(self) -> str: ...
    def generate(
        self,
        seed: Optional[Seed] = None,
        transparent: bool = False,
        bg_color: Optional[str] = None,
        output_size: Optional[int] = None,
    ) -> Image: ...
    def generate_png(
        self,
        seed: Optional[Seed] = None,
        transparent: bool = False,
        bg_color: Optional[str] = None,
        output_size: Optional[int] = None,
        format: Format = "png",
    ) -> bytes: ...
    def generate_array(
        self,
        seed: Optional[Seed] = None,
        transparent: bool = False,
        bg_color: Optional[str] = None,
        output_size: Optional[int] = None,
    ) -> npt.NDArray[np.uint8]: ...
    @overload
    def generate_batch(
        self,
        n: Optional[int] = None,
        seeds: Optional[List[Seed]] = None,
        transparent: bool = False,
        bg_color: Optional[str] = None,
        output_size: Optional[int] = None,
        format: None = None,
        progress: Optional[Callable[[int, int], object]] = None,
    ) -> List[Image]: ...
    @overload
    def generate_batch(
        self,
        n: Optional[int] = None,
        seeds: Optional[List[Seed]] = None,
        transparent: bool = False,
        bg_color: Optional[str] = None,
        output_size: Optional[int] = None,
        *,
        format: Format,
        progress: Optional[Callable[[int, int], object]] = None,
    ) -> List[bytes]: ...

class StableDiffusion:
    """A Stable Diffusion 1.5 / SDXL pipeline from a local diffusers folder, or from
    ``hf://owner/name[@revision][?variant=fp16]`` (every model path takes one; fetched into the
    Hugging Face cache on first use)."""

    def __init__(
        self,
        model: Union[str, PathLike[str]],
        device: str = "cpu",
        ip_adapters: Optional[List[Union[str, PathLike[str]]]] = None,
        image_encoder: Optional[Union[str, PathLike[str]]] = None,
        controlnets: Optional[List[Union[str, PathLike[str]]]] = None,
        safety_checker: Optional[Union[str, PathLike[str]]] = None,
        background_model: Optional[Union[str, PathLike[str]]] = None,
        face_analysis: Optional["FaceAnalysis"] = None,
        precision: str = "fp32",
    ) -> None:
        """Loads the diffusers folder `model`, then IP-Adapter files (`.bin`/`.safetensors`;
        image adapters need the CLIP `image_encoder` folder), ControlNet folders, diffusers'
        `safety_checker/` folder (used by `safety_checker=True`) and U²-Net weights for
        `face_avatar(remove_background=True)` (without them, plain backgrounds are keyed);
        with `face_analysis`, `face_avatar` gives a loaded IP-Adapter-FaceID(-Plus) the
        reference's largest face. `precision` ("fp32", "fp16", "bf16") is the models' compute
        precision."""
    @property
    def is_xl(self) -> bool: ...
    @property
    def precision(self) -> str: ...
    def text_to_image(
        self,
        prompt: str,
        negative_prompt: str = "",
        num_inference_steps: int = 30,
        guidance_scale: float = 7.5,
        width: Optional[int] = None,
        height: Optional[int] = None,
        num_images: int = 1,
        seed: Optional[Seed] = None,
        scheduler: Optional[str] = None,
        progress: Optional[Callable[[int, int], object]] = None,
        ip_adapter_image: Optional[Union[Image, List[Optional[Image]]]] = None,
        face_embedding: Optional[Union[List[float], List[Optional[List[float]]]]] = None,
        ip_adapter_scale: Optional[Union[float, Dict[str, Any], List[Union[float, Dict[str, Any]]]]] = None,
        s_scale: Optional[float] = None,
        control_image: Optional[Union[Image, List[Optional[Image]]]] = None,
        controlnet_conditioning_scale: Optional[Union[float, List[float]]] = None,
        safety_checker: bool = False,
        safety_checker_type: Optional[str] = None,
        preview: Optional[Callable[[int, int, List[Image]], object]] = None,
        preview_every: int = 1,
        preview_mode: Literal["approximate", "vae"] = "approximate",
        long_prompt: bool = False,
    ) -> List[Image]:
        """Images for a prompt; one `ip_adapter_image` (or `face_embedding` for FaceID /
        InstantID) per loaded IP-Adapter, one `control_image` per loaded ControlNet;
        `ip_adapter_scale` may be diffusers' per-block dict (`{"up": {"block_0": [0.0, 1.0, 0.0]}}`).
        `preview(step, total, images)` is called every `preview_every` steps with the images
        being drawn (`approximate`: latent-resolution colours, nearly free; `vae`: decoded).
        `long_prompt=True` encodes prompts past 75 tokens in 75-token windows instead of
        truncating them."""
    def image_to_image(
        self,
        image: Image,
        prompt: str,
        strength: float = 0.75,
        negative_prompt: str = "",
        num_inference_steps: int = 30,
        guidance_scale: float = 7.5,
        num_images: int = 1,
        seed: Optional[Seed] = None,
        scheduler: Optional[str] = None,
        progress: Optional[Callable[[int, int], object]] = None,
    ) -> List[Image]: ...
    def face_avatar(
        self,
        image: Image,
        prompt: Optional[str] = None,
        gender: Optional[str] = None,
        batch: int = 1,
        width: int = 512,
        height: int = 512,
        num_inference_steps: int = 30,
        guidance_scale: float = 7.5,
        negative_prompt: str = "",
        strength: float = 0.6,
        remove_background: bool = False,
        bg_color: Optional[str] = None,
        seed: Optional[Seed] = None,
        progress: Optional[Callable[[int, int], object]] = None,
        ip_adapter_scale: float = 0.6,
        safety_checker: bool = False,
        safety_checker_type: Optional[str] = None,
    ) -> List[Image]: ...

ImagePrompt = Union[Image, Tuple[Image, float], Tuple[Image, float, float]]

class VqganClip:
    """VQGAN+CLIP: optimises a taming VQGAN latent so that CLIP sees the prompts (seed 004)."""

    def __init__(
        self,
        vqgan_config: Union[str, PathLike[str]],
        vqgan_weights: Union[str, PathLike[str]],
        clip_weights: Union[str, PathLike[str]],
        clip_config: Optional[Union[str, PathLike[str]]] = None,
        device: str = "cpu",
    ) -> None: ...
    @property
    def factor(self) -> int: ...
    def generate(
        self,
        prompt: Optional[str] = None,
        image_prompts: Optional[Sequence[ImagePrompt]] = None,
        init_image: Optional[Image] = None,
        init_weight: float = 0.0,
        width: int = 256,
        height: int = 256,
        iterations: int = 100,
        step_size: float = 0.1,
        cutn: int = 32,
        cut_pow: float = 1.0,
        augment: bool = True,
        seed: Optional[Seed] = None,
        display_every: int = 10,
        progress: Optional[Callable[[int, int, float, Optional[Image]], object]] = None,
    ) -> Image: ...

class InstantID:
    """InstantID avatars (seed 002): SDXL + InstantID's face adapter and IdentityNet, with
    optional pose / canny ControlNets, all from local files."""

    def __init__(
        self,
        model: Union[str, PathLike[str]],
        ip_adapter: Union[str, PathLike[str]],
        identitynet: Union[str, PathLike[str]],
        pose_controlnet: Optional[Union[str, PathLike[str]]] = None,
        canny_controlnet: Optional[Union[str, PathLike[str]]] = None,
        device: str = "cpu",
        precision: str = "fp32",
    ) -> None: ...
    def generate(
        self,
        face_image: Image,
        face_embedding: List[float],
        face_keypoints: List[Tuple[float, float]],
        prompt: str,
        negative_prompt: str = "",
        width: int = 512,
        height: int = 512,
        num_inference_steps: int = 21,
        guidance_scale: float = 7.5,
        s_scale: float = 1.0,
        samples: int = 1,
        seed: Optional[Seed] = None,
        identitynet_strength_ratio: float = 0.8,
        adapter_strength_ratio: float = 1.0,
        pose_strength: float = 0.4,
        canny_strength: float = 0.3,
        controlnet_selection: List[str] = ["pose"],
        pose_image: Optional[Image] = None,
        progress: Optional[Callable[[int, int], object]] = None,
    ) -> List[Image]:
        """Avatars of the face (insightface's raw 512-value `embedding` and five `kps` in the
        photo's pixels); seed 002's ranges (steps 21/31/41, samples 1-2, <= 512x768 pixels)."""

class BackgroundRemover:
    """Background removal with a U²-Net (`u2net.pth`, `u2netp.pth`, `u2net_human_seg.pth` or a
    safetensors conversion), run as rembg runs it (the network at `input_size` squared)."""

    def __init__(self, model: Union[str, PathLike[str]], device: str = "cpu", input_size: int = 320) -> None: ...
    def mask(self, image: Image) -> Image:
        """The subject's mask, mode `L`, at the image's size (255 = subject)."""
    def remove(self, image: Image) -> Image:
        """`image` as RGBA with the background transparent (colours kept)."""

class FaceAnalysis:
    """insightface-style face analysis (SCRFD + ArcFace) from your own ONNX files: antelopev2's
    `scrfd_10g_bnkps.onnx` + `glintr100.onnx` (InstantID) or buffalo_l's `det_10g.onnx` +
    `w600k_r50.onnx` (IP-Adapter-FaceID)."""

    def __init__(
        self,
        detector: Union[str, PathLike[str]],
        recognizer: Union[str, PathLike[str]],
        device: str = "cpu",
        det_size: Tuple[int, int] = (640, 640),
        det_thresh: float = 0.5,
        nms_thresh: float = 0.4,
    ) -> None: ...
    def analyze(self, image: Image, max_num: int = 0) -> List[Dict[str, Any]]:
        """Faces as dicts: `bbox`, `det_score`, `kps` (five [x, y]), `embedding` (raw, what
        InstantID takes) and `normed_embedding`."""

class SafetyChecker:
    """diffusers' Stable Diffusion safety checker, from a `safety_checker/` folder."""

    def __init__(self, model: Union[str, PathLike[str]], device: str = "cpu") -> None: ...
    def check(self, images: Sequence[Image]) -> List[bool]: ...
    @staticmethod
    def obfuscate(
        image: Image, how: Literal["black", "blur", "pixelate", "sensitive_content_text"] = "black"
    ) -> Image: ...
