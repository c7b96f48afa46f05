#!/usr/bin/env python3
"""Reference fixtures for a Rust (burn) Stable Diffusion 1.5 / SDXL port, generated with diffusers.

Builds TINY random-weight pipelines from explicit configs (nothing is downloaded), saves them in the
diffusers folder layout and as original-LDM single-file checkpoints, and records per-component
inputs/outputs, scheduler traces, end-to-end txt2img/img2img runs and real-CLIP BPE tokenizer cases.

    nice -n 10 /work/venv-diffusers/bin/python tools/reference/diffusion/make_fixtures.py [--out DIR]

Everything runs on CPU in float32, single-threaded, with torch.use_deterministic_algorithms(True);
a second run produces byte-identical files (see MANIFEST.json, which holds every file's sha256).
See README.md (same folder) for what each file contains and KEYS.md for the weight-name spec.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
DEFAULT_OUT = os.path.join(REPO, "avatar-core", "tests", "fixtures", "diffusion")
sys.path.insert(0, HERE)
import clip_vocab  # noqa: E402

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

diffusers.utils.logging.set_verbosity_error()
transformers.utils.logging.set_verbosity_error()

# --------------------------------------------------------------------------------------------
# Tiny configs
# --------------------------------------------------------------------------------------------
TINY_MERGES = 64  # tiny tokenizer = first 64 merges of the real CLIP BPE -> vocab 512 + 64 + 2 = 578
TINY_VOCAB = 512 + TINY_MERGES + 2
EOT_ID = TINY_VOCAB - 1  # "<|endoftext|>" (like 49407 in the real vocab, it is the largest id)
BOS_ID = TINY_VOCAB - 2

SD15_UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(8, 16),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=2,  # diffusers quirk: for UNet2DConditionModel this is the NUMBER of heads
    norm_num_groups=4,
    norm_eps=1e-5,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
    downsample_padding=1,
    use_linear_projection=False,
)
SDXL_TE1_HIDDEN, SDXL_TE2_HIDDEN, SDXL_TE2_PROJ, SDXL_TIME_DIM = 16, 32, 24, 8
SDXL_UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=SDXL_TE1_HIDDEN + SDXL_TE2_HIDDEN,
    attention_head_dim=(2, 4),  # number of heads per block (quirk, see above)
    transformer_layers_per_block=(1, 2),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=SDXL_TIME_DIM,
    projection_class_embeddings_input_dim=SDXL_TE2_PROJ + 6 * SDXL_TIME_DIM,
    norm_num_groups=4,
    norm_eps=1e-5,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
    upcast_attention=False,
)


def vae_config(scaling_factor, force_upcast):
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    )


def te_config(hidden, intermediate, act, projection_dim):
    # bos/eos/pad ids 0/2/1 exactly like the real SD1.5 / SDXL text_encoder configs: eos_token_id == 2 makes
    # transformers pool at argmax(input_ids) (= the first <|endoftext|>, which has the largest id).
    return CLIPTextConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act=act,
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
        dropout=0.0,
        projection_dim=projection_dim,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


# Verbatim scheduler configs of the real hub repos (stable-diffusion-v1-5 / stable-diffusion-xl-base-1.0).
SD15_SCHEDULER_JSON = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SDXL_SCHEDULER_JSON = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
# Base config for the scheduler traces (SD1.x/SDXL training schedule).
SCHED_BASE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
)
SCHEDULERS = {
    "ddim": (DDIMScheduler, dict(clip_sample=False, set_alpha_to_one=False)),
    "euler": (EulerDiscreteScheduler, dict()),
    "euler_ancestral": (EulerAncestralDiscreteScheduler, dict()),
    "dpmpp_2m": (DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=False)),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True)),
    "lcm": (LCMScheduler, dict()),
}
SPACINGS = ("leading", "trailing", "linspace")
PREDICTIONS = ("epsilon", "v_prediction")
SCHED_TRACE_STEPS = 6
SCHED_COUNTS = (1, 2, 3, 4, 6, 10, 20, 25, 30, 50)
SCHED_SHAPE = (1, 4, 4, 4)

PROMPTS = [
    "a photo of an astronaut riding a horse",
    "",
    "A   Painting of a CAT, don't   stop! 1234 caf\u00e9 \u2615",
    (
        "masterpiece, best quality, highly detailed portrait of an old fisherman with a grey beard and a yellow "
        "raincoat standing on a wooden pier at sunset, dramatic lighting, volumetric fog, sharp focus, 85mm lens, "
        "film grain, trending on artstation, intricate details, cinematic composition, warm colors"
    ),
]
TE_PROMPTS = [PROMPTS[1], PROMPTS[3]]  # "" and the >77-token prompt; the short prompt is covered by e2e/*_inputs prompt_embeds
E2E_PROMPT = "a photo of an astronaut riding a horse"
E2E_NEGATIVE = "blurry, low quality"

CLIP_BPE_CASES = [
    "",
    "a photo of an astronaut riding a horse",
    "A Photo Of An ASTRONAUT Riding A Horse",
    "don't can't won't I'm you're we've they'll she'd it's",
    "DON'T IT'S",
    "rock'n'roll o'clock",
    "  leading and trailing spaces   ",
    "multiple     spaces\tand\ttabs\nand\nnewlines",
    "hello,world!how are you?",
    "12345 3.14159 1,000,000 2024-01-01",
    "x1024 v1.5 sdxl-1.0",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber fa\u00e7ade",
    "cafe\u0301 (decomposed e + combining acute)",
    "\u00c9COLE \u0130stanbul STRASSE stra\u00dfe",
    "\u4e00\u4e2a\u5b87\u822a\u5458\u9a91\u9a6c",
    "\u5bcc\u58eb\u5c71\u3068\u685c \u3072\u3089\u304c\u306a \u30ab\u30bf\u30ab\u30ca",
    "\u043f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440",
    "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd",
    "emoji \U0001F600\U0001F680 \u2764\ufe0f \U0001F468\u200d\U0001F469\u200d\U0001F467 \U0001F44D\U0001F3FD",
    "(masterpiece:1.2), [bad hands], {best quality}, <lora:foo:0.8>",
    "a_b-c/d\\e|f~g`h^i",
    "!!!??? ... --- ***",
    "&amp; &lt;tag&gt; AT&T",
    "https://example.com/path?q=1&x=y",
    "email@example.com #hashtag @mention $100 50% 3\u00d74",
    "a <|endoftext|> b <|startoftext|> c",
    "zero\u200bwidth\u00a0nbsp",
    "fullwidth \uff21\uff22\uff23 \uff11\uff12\uff13",
    "ligature \ufb01 and \u2160 roman",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    ", ".join(["a very long prompt with many words"] * 12),
]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def randn(shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float32)


def randomize_constant_params_(module: torch.nn.Module, seed: int) -> None:
    """Default inits leave norm weights at 1 and many biases at 0; perturb every constant tensor so that
    swapped/missing weight loads are visible in the outputs."""
    g = gen(seed)
    with torch.no_grad():
        for _, p in module.named_parameters():
            flat = p.detach().reshape(-1)
            if flat.numel() > 0 and bool(torch.all(flat == flat[0])):
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def meta_str(d: dict) -> dict:
    return {"info": json.dumps(d, sort_keys=True, ensure_ascii=False)}


def save_st(path: str, tensors: dict, info: dict | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    out = {}
    for k, v in tensors.items():
        if not isinstance(v, torch.Tensor):
            v = torch.as_tensor(v)
        out[k] = v.detach().cpu().clone().contiguous()
    save_file(out, path, metadata=meta_str(info or {}))


def write_json(path: str, obj, indent=1) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False, sort_keys=False)
        f.write("\n")


def jsonable(v):
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def sched_config_dict(s) -> dict:
    d = {k: jsonable(v) for k, v in dict(s.config).items() if not k.startswith("_")}
    d["_class_name"] = type(s).__name__
    return d


class Capture:
    """Forward hooks that store module outputs (first element of tuples / `.sample`)."""

    def __init__(self):
        self.data: dict[str, torch.Tensor] = {}
        self.handles = []

    @staticmethod
    def _first(o):
        if isinstance(o, torch.Tensor):
            return o
        if isinstance(o, (tuple, list)):
            return Capture._first(o[0])
        for attr in ("sample", "last_hidden_state"):
            if hasattr(o, attr):
                return getattr(o, attr)
        raise TypeError(type(o))

    def add(self, module, name):
        def hook(_m, _inp, out):
            self.data[name] = self._first(out).detach().clone()

        self.handles.append(module.register_forward_hook(hook))

    def add_many(self, root, prefix, names):
        mods = dict(root.named_modules())
        for n in names:
            self.add(mods[n], f"{prefix}{n}")

    def close(self):
        for h in self.handles:
            h.remove()
        self.handles = []


@contextlib.contextmanager
def record_randn():
    """Patch diffusers' `randn_tensor` everywhere it was imported and record every draw in order."""
    from diffusers.utils import torch_utils

    orig = torch_utils.randn_tensor
    draws: list[tuple[str, torch.Tensor]] = []
    patched = []

    def make(modname):
        def wrapper(*args, **kwargs):
            t = orig(*args, **kwargs)
            draws.append((modname, t.detach().clone()))
            return t

        return wrapper

    for name, mod in list(sys.modules.items()):
        if name.startswith("diffusers") and getattr(mod, "randn_tensor", None) is orig:
            setattr(mod, "randn_tensor", make(name))
            patched.append(mod)
    try:
        yield draws
    finally:
        for mod in patched:
            setattr(mod, "randn_tensor", orig)


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------
def write_tiny_tokenizer(dirpath: str, pad_token: str) -> CLIPTokenizer:
    if os.path.isdir(dirpath):
        shutil.rmtree(dirpath)
    clip_vocab.write_tokenizer_dir(dirpath, clip_vocab.load_merges()[:TINY_MERGES], pad_token=pad_token)
    tok = CLIPTokenizer.from_pretrained(dirpath)
    assert len(tok) == TINY_VOCAB and tok.eos_token_id == EOT_ID and tok.bos_token_id == BOS_ID
    return tok


def tok_case(tok: CLIPTokenizer, text: str) -> dict:
    enc = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True)
    full = tok(text).input_ids
    return {
        "text": text,
        "input_ids": list(enc.input_ids),
        "untruncated_ids": list(full),
        "num_untruncated": len(full),
        "tokens": tok.convert_ids_to_tokens(full),
    }


# --------------------------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------------------------
def build_sd15() -> StableDiffusionPipeline:
    seed_all(1001)
    unet = UNet2DConditionModel(**SD15_UNET)
    randomize_constant_params_(unet, 1002)
    seed_all(1003)
    vae = AutoencoderKL(**vae_config(0.18215, False))
    randomize_constant_params_(vae, 1004)
    seed_all(1005)
    te = CLIPTextModel(te_config(32, 37, "quick_gelu", 32))
    randomize_constant_params_(te, 1006)
    tmp = tempfile.mkdtemp()
    tok = write_tiny_tokenizer(os.path.join(tmp, "tok"), clip_vocab.EOS)
    sched = PNDMScheduler.from_config(SD15_SCHEDULER_JSON)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=te,
        tokenizer=tok,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    shutil.rmtree(tmp)
    return pipe.to(torch.float32)


def build_sdxl() -> StableDiffusionXLPipeline:
    seed_all(2001)
    unet = UNet2DConditionModel(**SDXL_UNET)
    randomize_constant_params_(unet, 2002)
    seed_all(2003)
    vae = AutoencoderKL(**vae_config(0.13025, True))
    randomize_constant_params_(vae, 2004)
    seed_all(2005)
    te1 = CLIPTextModel(te_config(SDXL_TE1_HIDDEN, 37, "quick_gelu", SDXL_TE1_HIDDEN))
    randomize_constant_params_(te1, 2006)
    seed_all(2007)
    te2 = CLIPTextModelWithProjection(te_config(SDXL_TE2_HIDDEN, 64, "gelu", SDXL_TE2_PROJ))
    randomize_constant_params_(te2, 2008)
    tmp = tempfile.mkdtemp()
    tok1 = write_tiny_tokenizer(os.path.join(tmp, "tok1"), clip_vocab.EOS)
    tok2 = write_tiny_tokenizer(os.path.join(tmp, "tok2"), "!")
    sched = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_JSON)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tok1,
        tokenizer_2=tok2,
        unet=unet,
        scheduler=sched,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    shutil.rmtree(tmp)
    return pipe.to(torch.float32)


def save_pipeline_folder(pipe, folder: str, tokenizers: dict[str, str], scheduler_json: dict) -> None:
    """save_pretrained, then make the folder look like the real hub repos:
    - tokenizer dirs: vocab.json + merges.txt + tokenizer_config.json + special_tokens_map.json (no tokenizer.json)
    - text encoder weights with the `text_model.` prefix that the hub files have (transformers >= 5.6 saves
      CLIPTextModel without it; it loads both)
    - scheduler_config.json verbatim from the hub repo."""
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    for sub, pad in tokenizers.items():
        write_tiny_tokenizer(os.path.join(folder, sub), pad)
    for sub in ("text_encoder", "text_encoder_2"):
        path = os.path.join(folder, sub, "model.safetensors")
        if not os.path.exists(path):
            continue
        sd = load_file(path)
        if any(not k.startswith("text_model.") and not k.startswith("text_projection") for k in sd):
            sd = {(k if k.startswith("text_model.") or k.startswith("text_projection") else "text_model." + k): v for k, v in sd.items()}
        save_file(sd, path, metadata={"format": "pt"})
    write_json(os.path.join(folder, "scheduler", "scheduler_config.json"), scheduler_json, indent=2)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, what: str) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    skip = {"embeddings.position_ids", "text_model.embeddings.position_ids"}
    ka = sorted(k for k in sa if k not in skip)
    kb = sorted(k for k in sb if k not in skip)
    assert ka == kb, f"{what}: key mismatch {set(ka) ^ set(kb)}"
    for k in ka:
        assert sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]), f"{what}: tensor {k} differs"


# --------------------------------------------------------------------------------------------
# diffusers -> original LDM single-file key mapping (inverse of diffusers/loaders/single_file_utils.py)
# Each entry: ldm_key -> (component, [diffusers keys], transform)
# transform: "" copy | "T" transpose | "cat0" concatenate along dim 0 (q,k,v) | "conv1x1" [C,C] -> [C,C,1,1]
# --------------------------------------------------------------------------------------------
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def unet_ldm_map(sd: dict, cfg: dict, prefix: str = "model.diffusion_model.") -> dict:
    lpb = cfg["layers_per_block"]
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    n_up = len(cfg["up_block_types"])
    out = {}
    for k in sd:
        parts = k.split(".")
        new = None
        head2 = ".".join(parts[:2])
        if len(parts) > 2 and head2 in fixed:
            new = fixed[head2] + "." + ".".join(parts[2:])
        elif parts[0] in fixed:
            new = fixed[parts[0]] + "." + ".".join(parts[1:])
        elif parts[0] == "down_blocks":
            b, kind = int(parts[1]), parts[2]
            if kind == "resnets":
                l = int(parts[3])
                sub = UNET_RESNET.get(parts[4], parts[4])
                new = f"input_blocks.{1 + b * (lpb + 1) + l}.0.{sub}." + ".".join(parts[5:])
            elif kind == "attentions":
                l = int(parts[3])
                new = f"input_blocks.{1 + b * (lpb + 1) + l}.1." + ".".join(parts[4:])
            elif kind == "downsamplers":
                assert parts[3] == "0" and parts[4] == "conv"
                new = f"input_blocks.{1 + b * (lpb + 1) + lpb}.0.op." + ".".join(parts[5:])
        elif parts[0] == "mid_block":
            kind, i = parts[1], int(parts[2])
            if kind == "resnets":
                sub = UNET_RESNET.get(parts[3], parts[3])
                new = f"middle_block.{0 if i == 0 else 2}.{sub}." + ".".join(parts[4:])
            elif kind == "attentions":
                new = "middle_block.1." + ".".join(parts[3:])
        elif parts[0] == "up_blocks":
            b, kind = int(parts[1]), parts[2]
            has_attn = cfg["up_block_types"][b].startswith("CrossAttn")
            if kind == "resnets":
                l = int(parts[3])
                sub = UNET_RESNET.get(parts[4], parts[4])
                new = f"output_blocks.{b * (lpb + 1) + l}.0.{sub}." + ".".join(parts[5:])
            elif kind == "attentions":
                l = int(parts[3])
                new = f"output_blocks.{b * (lpb + 1) + l}.1." + ".".join(parts[4:])
            elif kind == "upsamplers":
                assert b < n_up - 1
                new = f"output_blocks.{b * (lpb + 1) + lpb}.{2 if has_attn else 1}.conv." + ".".join(parts[5:])
        if new is None:
            raise KeyError(f"no LDM mapping for unet key {k}")
        out[prefix + new] = ("unet", [k], "")
    return out


def vae_ldm_map(sd: dict, cfg: dict, prefix: str = "first_stage_model.") -> dict:
    n_up = len(cfg["up_block_types"])
    fixed = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for k in sd:
        parts = k.split(".")
        new, tr = None, ""
        head2 = ".".join(parts[:2])
        if head2 in fixed:
            new = fixed[head2] + "." + parts[-1]
        elif parts[0] in ("quant_conv", "post_quant_conv") or parts[1] in ("conv_in", "conv_out"):
            new = k
        elif parts[1] == "down_blocks":
            i = int(parts[2])
            if parts[3] == "resnets":
                sub = "nin_shortcut" if parts[5] == "conv_shortcut" else parts[5]
                new = f"encoder.down.{i}.block.{parts[4]}.{sub}.{parts[6]}"
            elif parts[3] == "downsamplers":
                new = f"encoder.down.{i}.downsample.conv.{parts[-1]}"
        elif parts[1] == "up_blocks":
            i = int(parts[2])
            j = n_up - 1 - i
            if parts[3] == "resnets":
                sub = "nin_shortcut" if parts[5] == "conv_shortcut" else parts[5]
                new = f"decoder.up.{j}.block.{parts[4]}.{sub}.{parts[6]}"
            elif parts[3] == "upsamplers":
                new = f"decoder.up.{j}.upsample.conv.{parts[-1]}"
        elif parts[1] == "mid_block":
            if parts[2] == "resnets":
                sub = "nin_shortcut" if parts[4] == "conv_shortcut" else parts[4]
                new = f"{parts[0]}.mid.block_{int(parts[3]) + 1}.{sub}.{parts[5]}"
            elif parts[2] == "attentions":
                rest = ".".join(parts[4:-1])
                new = f"{parts[0]}.mid.attn_1.{attn[rest]}.{parts[-1]}"
                if parts[-1] == "weight" and rest != "group_norm":
                    tr = "conv1x1"
        if new is None:
            raise KeyError(f"no LDM mapping for vae key {k}")
        out[prefix + new] = ("vae", [k], tr)
    return out


def clip_ldm_map(sd: dict, component: str, prefix: str) -> dict:
    # HF CLIPTextModel keys (transformers >= 5.6 has no `text_model.` prefix in the module tree) under
    # `<prefix>text_model.` - exactly what the original SD1.x / SDXL-embedder-0 checkpoints contain.
    out = {}
    for k in sd:
        kk = k[len("text_model."):] if k.startswith("text_model.") else k
        if kk == "embeddings.position_ids":
            continue
        out[f"{prefix}text_model.{kk}"] = (component, [k], "")
    return out


def open_clip_ldm_map(sd: dict, component: str, prefix: str, num_layers: int) -> dict:
    # CLIPTextModelWithProjection (keys `text_model.*`, `text_projection.weight`) -> open_clip layout.
    out = {
        prefix + "token_embedding.weight": (component, ["text_model.embeddings.token_embedding.weight"], ""),
        prefix + "positional_embedding": (component, ["text_model.embeddings.position_embedding.weight"], ""),
        prefix + "ln_final.weight": (component, ["text_model.final_layer_norm.weight"], ""),
        prefix + "ln_final.bias": (component, ["text_model.final_layer_norm.bias"], ""),
        prefix + "text_projection": (component, ["text_projection.weight"], "T"),
    }
    for i in range(num_layers):
        h = f"text_model.encoder.layers.{i}."
        o = f"{prefix}transformer.resblocks.{i}."
        for wb in ("weight", "bias"):
            out[o + f"attn.in_proj_{wb}"] = (component, [h + f"self_attn.{p}_proj.{wb}" for p in "qkv"], "cat0")
            out[o + f"attn.out_proj.{wb}"] = (component, [h + f"self_attn.out_proj.{wb}"], "")
            out[o + f"ln_1.{wb}"] = (component, [h + f"layer_norm1.{wb}"], "")
            out[o + f"ln_2.{wb}"] = (component, [h + f"layer_norm2.{wb}"], "")
            out[o + f"mlp.c_fc.{wb}"] = (component, [h + f"mlp.fc1.{wb}"], "")
            out[o + f"mlp.c_proj.{wb}"] = (component, [h + f"mlp.fc2.{wb}"], "")
    covered = {d for _, ds, _ in out.values() for d in ds}
    missing = [k for k in sd if k not in covered and not k.endswith("position_ids")]
    assert not missing, f"open_clip mapping misses {missing}"
    return out


def apply_map(mapping: dict, state: dict[str, dict]) -> dict:
    out = {}
    for ldm_key, (comp, dkeys, tr) in mapping.items():
        ts = [state[comp][d] for d in dkeys]
        if tr == "":
            t = ts[0]
        elif tr == "T":
            t = ts[0].t()
        elif tr == "cat0":
            t = torch.cat(ts, 0)
        elif tr == "conv1x1":
            t = ts[0][:, :, None, None]
        else:
            raise ValueError(tr)
        out[ldm_key] = t.detach().clone().contiguous()
    return out


def pipeline_state(pipe, comps) -> dict[str, dict]:
    return {c: {k: v for k, v in getattr(pipe, c).state_dict().items()} for c in comps}


def export_sd15_single_file(pipe, path: str) -> dict:
    st = pipeline_state(pipe, ["unet", "vae", "text_encoder"])
    mapping = {}
    mapping.update(unet_ldm_map(st["unet"], dict(pipe.unet.config)))
    mapping.update(vae_ldm_map(st["vae"], dict(pipe.vae.config)))
    mapping.update(clip_ldm_map(st["text_encoder"], "text_encoder", "cond_stage_model.transformer."))
    tensors = apply_map(mapping, st)
    # Extra keys that real SD1.x checkpoints carry and loaders must ignore / may use:
    tensors["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    s = DDIMScheduler(**SCHED_BASE)
    tensors["betas"] = s.betas.clone().float()
    tensors["alphas_cumprod"] = s.alphas_cumprod.clone().float()
    save_file(tensors, path, metadata={"format": "pt"})
    return mapping


def export_sdxl_single_file(pipe, path: str) -> dict:
    st = pipeline_state(pipe, ["unet", "vae", "text_encoder", "text_encoder_2"])
    mapping = {}
    mapping.update(unet_ldm_map(st["unet"], dict(pipe.unet.config)))
    mapping.update(vae_ldm_map(st["vae"], dict(pipe.vae.config)))
    mapping.update(clip_ldm_map(st["text_encoder"], "text_encoder", "conditioner.embedders.0.transformer."))
    mapping.update(
        open_clip_ldm_map(st["text_encoder_2"], "text_encoder_2", "conditioner.embedders.1.model.", pipe.text_encoder_2.config.num_hidden_layers)
    )
    tensors = apply_map(mapping, st)
    save_file(tensors, path, metadata={"format": "pt"})
    return mapping


def config_only_copy(folder: str, dst: str) -> None:
    shutil.copytree(folder, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))


# --------------------------------------------------------------------------------------------
# Per-component IO
# --------------------------------------------------------------------------------------------
def text_encoder_io(te, tok, prompts, path, name, with_hooks=False):
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    cap = Capture()
    if with_hooks:
        cap.add_many(te, "", ["encoder.layers.0.self_attn"] if not hasattr(te, "text_model") else ["text_model.encoder.layers.0.self_attn"])
    with torch.no_grad():
        o = te(ids, output_hidden_states=True)
    cap.close()
    t = {"input_ids": ids.to(torch.int64)}
    for i, h in enumerate(o.hidden_states):
        t[f"hidden_states.{i}"] = h
    t["last_hidden_state"] = o.last_hidden_state
    if hasattr(o, "text_embeds"):
        t["text_embeds"] = o.text_embeds  # = text_projection(pooler_output), no bias
        with torch.no_grad():
            t["pooler_output"] = te.text_model(ids).pooler_output
    else:
        t["pooler_output"] = o.pooler_output
    t["pool_index"] = ids.to(torch.int32).argmax(-1).to(torch.int64)
    for k, v in cap.data.items():
        t["hook." + k.replace("text_model.", "")] = v
    save_st(path, t, {"component": name, "prompts": prompts, "num_hidden_layers": te.config.num_hidden_layers,
                      "hidden_act": te.config.hidden_act, "note": "hidden_states.0 = token+position embeddings; hidden_states.i = output of layer i; last_hidden_state = final_layer_norm(hidden_states.N); SD1.x uses last_hidden_state, SDXL uses hidden_states.(N-1) of both encoders"})


UNET_HOOKS_COMMON = ["time_proj", "time_embedding", "conv_in", "down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1", "conv_norm_out"]


def unet_io(unet, path, name, xl: bool):
    sample = randn((2, 4, 8, 8), 3001)
    timestep = torch.tensor([999.0, 421.5])
    ehs = randn((2, 77, unet.config.cross_attention_dim), 3002)
    cap = Capture()
    hooks = list(UNET_HOOKS_COMMON)
    if xl:
        blk = "down_blocks.1.attentions.0"
        hooks += ["add_time_proj", "add_embedding", "down_blocks.0.resnets.0", f"{blk}.norm", f"{blk}.proj_in", f"{blk}.proj_out"]
        for j in range(2):
            tb = f"{blk}.transformer_blocks.{j}"
            hooks += [f"{tb}.norm1", f"{tb}.attn1", f"{tb}.attn2", f"{tb}.ff", tb]
        hooks += ["mid_block.attentions.0", "up_blocks.0.attentions.1"]
    else:
        blk = "down_blocks.0.attentions.0"
        tb = f"{blk}.transformer_blocks.0"
        hooks += ["down_blocks.0.resnets.0", blk, f"{blk}.norm", f"{blk}.proj_in", f"{blk}.proj_out",
                  f"{tb}.norm1", f"{tb}.attn1", f"{tb}.norm2", f"{tb}.attn2", f"{tb}.norm3", f"{tb}.ff", tb,
                  "mid_block.attentions.0", "up_blocks.0.resnets.1", "up_blocks.1.resnets.0"]
    cap.add_many(unet, "", hooks)
    kw = {}
    t = {"sample": sample, "timestep": timestep, "encoder_hidden_states": ehs}
    if xl:
        text_embeds = randn((2, SDXL_TE2_PROJ), 3003)
        time_ids = torch.tensor([[32.0, 32.0, 0.0, 0.0, 32.0, 32.0], [1024.0, 768.0, 16.0, 8.0, 1024.0, 1024.0]])
        kw["added_cond_kwargs"] = {"text_embeds": text_embeds, "time_ids": time_ids}
        t.update({"text_embeds": text_embeds, "time_ids": time_ids})
    with torch.no_grad():
        out = unet(sample, timestep, encoder_hidden_states=ehs, **kw).sample
    cap.close()
    t["out"] = out
    for k, v in cap.data.items():
        t["hook." + k] = v
    save_st(path, t, {"component": name, "hooks": hooks, "note": "hook.X = output of submodule X (first tuple element); hook.time_proj = sinusoidal embedding, hook.add_time_proj = sinusoidal embedding of time_ids flattened per batch ([B*6, dim] before reshape)"})


def vae_io(vae, path, name, with_hooks=True):
    image = torch.rand(1, 3, 16, 16, generator=gen(4001)) * 2 - 1
    z = randn((1, 4, 8, 8), 4002)
    noise = randn((1, 4, 8, 8), 4003)
    cap = Capture()
    hooks = ["encoder.conv_in", "encoder.down_blocks.0", "encoder.down_blocks.1", "encoder.mid_block.attentions.0", "encoder.mid_block",
             "encoder", "quant_conv", "post_quant_conv", "decoder.conv_in", "decoder.mid_block.attentions.0", "decoder.mid_block",
             "decoder.up_blocks.0", "decoder.up_blocks.1"]
    cap.add_many(vae, "", hooks)
    with torch.no_grad():
        dist = vae.encode(image).latent_dist
        moments = cap.data["quant_conv"]
        if not with_hooks:
            cap.close()
            cap.data = {}
        dec = vae.decode(z).sample
    cap.close()
    t = {
        "image": image,
        "moments": moments,
        "mean": dist.mean,
        "logvar": dist.logvar,
        "std": dist.std,
        "noise": noise,
        "posterior_sample": dist.mean + dist.std * noise,
        "z": z,
        "decoded": dec,
    }
    for k, v in cap.data.items():
        t["hook." + k] = v
    save_st(path, t, {"component": name, "scaling_factor": vae.config.scaling_factor,
                      "note": "encode: moments = quant_conv(encoder(image)); mean, logvar = chunk(moments, 2, dim=1); logvar clamped to [-30, 20]; std = exp(0.5*logvar). decode: decoded = decoder(post_quant_conv(z)). Pipelines decode latents/scaling_factor and encode to scaling_factor*sample."})


# --------------------------------------------------------------------------------------------
# Schedulers
# --------------------------------------------------------------------------------------------
def make_scheduler(name: str, spacing: str, prediction: str):
    cls, extra = SCHEDULERS[name]
    cfg = dict(SCHED_BASE)
    cfg.update(extra)
    cfg.update(timestep_spacing=spacing, prediction_type=prediction)
    return cls(**cfg)


def scheduler_fixtures(out_dir: str) -> None:
    sample0 = randn(SCHED_SHAPE, 5001)
    model_outputs = torch.stack([randn(SCHED_SHAPE, 5100 + i) for i in range(SCHED_TRACE_STEPS)])
    base = DDIMScheduler(**SCHED_BASE)
    save_st(os.path.join(out_dir, "schedulers", "common.safetensors"),
            {"sample0": sample0, "model_outputs": model_outputs, "betas": base.betas.float(), "alphas_cumprod": base.alphas_cumprod.float()},
            {"config": SCHED_BASE, "note": "trace: sample = sample0 * init_noise_sigma; for i, t: scaled[i] = scale_model_input(sample, t); out = step(model_outputs[i], t, sample, generator); sample = prev[i]"})
    for name in SCHEDULERS:
        tensors, info = {}, {"configs": {}, "errors": {}}
        spacings = SPACINGS
        for spacing in spacings:
            for n in SCHED_COUNTS:
                try:
                    s = make_scheduler(name, spacing, "epsilon")
                    s.set_timesteps(n)
                except Exception as e:  # noqa: BLE001
                    info["errors"][f"{spacing}.n{n}"] = f"{type(e).__name__}: {e}"
                    continue
                tensors[f"{spacing}.n{n}.timesteps"] = s.timesteps.clone()
                if hasattr(s, "sigmas") and isinstance(getattr(s, "sigmas"), torch.Tensor):
                    tensors[f"{spacing}.n{n}.sigmas"] = s.sigmas.clone().float()
            for pred in PREDICTIONS:
                key = f"{spacing}.{pred}"
                s = make_scheduler(name, spacing, pred)
                s.set_timesteps(SCHED_TRACE_STEPS)
                info["configs"][key] = sched_config_dict(s)
                init_sigma = float(s.init_noise_sigma)
                sample = sample0 * s.init_noise_sigma
                g = gen(5200)
                scaled, prev, x0 = [], [], []
                with record_randn() as draws:
                    for i, t in enumerate(s.timesteps):
                        scaled.append(s.scale_model_input(sample, t))
                        out = s.step(model_outputs[i], t, sample, generator=g)
                        sample = out.prev_sample
                        prev.append(sample)
                        for attr in ("pred_original_sample", "denoised"):
                            if getattr(out, attr, None) is not None:
                                x0.append(getattr(out, attr))
                tensors[f"{key}.init_noise_sigma"] = torch.tensor(init_sigma, dtype=torch.float32)
                tensors[f"{key}.init_sample"] = sample0 * s.init_noise_sigma
                tensors[f"{key}.timesteps"] = s.timesteps.clone()
                if hasattr(s, "sigmas") and isinstance(getattr(s, "sigmas"), torch.Tensor):
                    tensors[f"{key}.sigmas"] = s.sigmas.clone().float()
                tensors[f"{key}.scaled"] = torch.stack(scaled)
                tensors[f"{key}.prev"] = torch.stack(prev)
                if x0:
                    tensors[f"{key}.pred_original"] = torch.stack(x0)
                if draws:
                    # one draw per step that injects noise, in step order (LCM: every step but the last)
                    tensors[f"{key}.noise"] = torch.stack([d for _, d in draws])
        save_st(os.path.join(out_dir, "schedulers", f"{name}.safetensors"), tensors, info)


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------
def e2e_scheduler(base_config, name: str):
    """What a user does to switch schedulers: Cls.from_config(<the repo's scheduler_config.json>, **overrides)."""
    cls, extra = SCHEDULERS[name]
    return cls.from_config(base_config, **extra)


def run_pipe(pipe, kwargs, seed):
    """Run a pipeline, recording UNet inputs/outputs, per-step latents, VAE decode in/out and noise draws."""
    unet_in, unet_out, step_latents, dec = [], [], [], {}

    def pre(_m, args, kw):
        unet_in.append({"sample": args[0].detach().clone(), "t": torch.as_tensor(args[1]).detach().clone().float().reshape(()),
                        "ehs": kw["encoder_hidden_states"].detach().clone(), **({k: v.detach().clone() for k, v in kw["added_cond_kwargs"].items()} if kw.get("added_cond_kwargs") else {})})

    def post(_m, _a, _kw, out):
        unet_out.append(Capture._first(out).detach().clone())

    h1 = pipe.unet.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = pipe.unet.register_forward_hook(post, with_kwargs=True)
    orig_decode = pipe.vae.decode

    def decode(z, *a, **k):
        r = orig_decode(z, *a, **k)
        dec["vae_decode_in"] = z.detach().clone()
        dec["vae_decoded"] = (r[0] if isinstance(r, tuple) else r.sample).detach().clone()
        return r

    pipe.vae.decode = decode

    def cb(_p, i, t, kw):
        step_latents.append(kw["latents"].detach().clone())
        return {}

    try:
        with record_randn() as draws, torch.no_grad():
            image = pipe(**kwargs, generator=gen(seed), output_type="pt", callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["latents"]).images
    finally:
        h1.remove()
        h2.remove()
        pipe.vae.decode = orig_decode
    res = {
        "timesteps": torch.stack([u["t"] for u in unet_in]),
        "unet_in": torch.stack([u["sample"] for u in unet_in]),
        "unet_out": torch.stack(unet_out),
        "step_latents": torch.stack(step_latents),
        "vae_decode_in": dec["vae_decode_in"],
        "vae_decoded": dec["vae_decoded"],
        "image": image,
    }
    extra = {"ehs": unet_in[0]["ehs"]}
    if "text_embeds" in unet_in[0]:
        extra["text_embeds"] = unet_in[0]["text_embeds"]
        extra["time_ids"] = unet_in[0]["time_ids"]
    return res, extra, draws


def e2e_fixtures(sd15, sdxl, out_dir: str) -> None:
    e2e = os.path.join(out_dir, "e2e")
    H = W = 16
    lat = randn((1, 4, H // 2, W // 2), 6001)
    common_kw = dict(prompt=E2E_PROMPT, negative_prompt=E2E_NEGATIVE, num_inference_steps=2, guidance_scale=7.5, height=H, width=W, latents=lat)
    inputs = {"latents": lat}
    base15, basexl = dict(sd15.scheduler.config), dict(sdxl.scheduler.config)
    for name in SCHEDULERS:
        sd15.scheduler = e2e_scheduler(base15, name)
        res, extra, draws = run_pipe(sd15, common_kw, 6100)
        res["init_noise_sigma"] = torch.tensor(float(sd15.scheduler.init_noise_sigma), dtype=torch.float32)
        if draws:
            res["noise"] = torch.stack([d for _, d in draws])
        inputs.setdefault("prompt_embeds", extra["ehs"])
        assert torch.equal(inputs["prompt_embeds"], extra["ehs"])
        info = {"scheduler": sched_config_dict(sd15.scheduler), "prompt": E2E_PROMPT, "negative_prompt": E2E_NEGATIVE,
                "num_inference_steps": 2, "guidance_scale": 7.5, "height": H, "width": W, "generator_seed": 6100,
                "noise_draws": [m for m, _ in draws]}
        save_st(os.path.join(e2e, f"sd15_txt2img_{name}.safetensors"), res, info)
    save_st(os.path.join(e2e, "sd15_txt2img_inputs.safetensors"), inputs,
            {"prompt": E2E_PROMPT, "negative_prompt": E2E_NEGATIVE, "note": "prompt_embeds = cat([negative, positive]) = text_encoder last_hidden_state; latents are passed to the pipeline, which multiplies them by scheduler.init_noise_sigma"})

    # SDXL
    xl_inputs = {"latents": lat}
    xl_kw = dict(common_kw, original_size=(48, 40), crops_coords_top_left=(4, 2), target_size=(16, 16))
    for name in ("euler", "dpmpp_2m_karras"):
        sdxl.scheduler = e2e_scheduler(basexl, name)
        res, extra, draws = run_pipe(sdxl, xl_kw, 6200)
        res["init_noise_sigma"] = torch.tensor(float(sdxl.scheduler.init_noise_sigma), dtype=torch.float32)
        for k in ("ehs", "text_embeds", "time_ids"):
            key = {"ehs": "prompt_embeds", "text_embeds": "pooled_prompt_embeds", "time_ids": "add_time_ids"}[k]
            xl_inputs.setdefault(key, extra[k])
            assert torch.equal(xl_inputs[key], extra[k])
        info = {"scheduler": sched_config_dict(sdxl.scheduler), "prompt": E2E_PROMPT, "negative_prompt": E2E_NEGATIVE,
                "num_inference_steps": 2, "guidance_scale": 7.5, "height": H, "width": W, "original_size": [48, 40],
                "crops_coords_top_left": [4, 2], "target_size": [16, 16], "generator_seed": 6200, "noise_draws": [m for m, _ in draws]}
        save_st(os.path.join(e2e, f"sdxl_txt2img_{name}.safetensors"), res, info)
    save_st(os.path.join(e2e, "sdxl_txt2img_inputs.safetensors"), xl_inputs,
            {"prompt": E2E_PROMPT, "negative_prompt": E2E_NEGATIVE,
             "note": "prompt_embeds = cat([neg, pos]) of concat(te1.hidden_states[-2], te2.hidden_states[-2], dim=-1); pooled_prompt_embeds = cat([neg, pos]) of te2 text_embeds; add_time_ids rows = original_size + crops_coords_top_left + target_size"})

    # img2img (SD1.5)
    i2i = StableDiffusionImg2ImgPipeline(**sd15.components)
    i2i.set_progress_bar_config(disable=True)
    i2i.scheduler = e2e_scheduler(base15, "euler")
    init01 = torch.rand(1, 3, H, W, generator=gen(6301))
    enc_in, added = {}, {}
    orig_encode, orig_add_noise = i2i.vae.encode, i2i.scheduler.add_noise

    def encode(x, *a, **k):
        enc_in["x"] = x.detach().clone()
        r = orig_encode(x, *a, **k)
        enc_in["mean"] = r.latent_dist.mean.detach().clone()
        enc_in["std"] = r.latent_dist.std.detach().clone()
        return r

    def add_noise(orig, noise, t):
        r = orig_add_noise(orig, noise, t)
        added.update(original=orig.detach().clone(), noise=noise.detach().clone(), t=torch.as_tensor(t).detach().clone().float(), noisy=r.detach().clone())
        return r

    i2i.vae.encode = encode
    i2i.scheduler.add_noise = add_noise
    try:
        res, extra, draws = run_pipe(i2i, dict(prompt=E2E_PROMPT, negative_prompt=E2E_NEGATIVE, image=init01, strength=0.5,
                                               num_inference_steps=4, guidance_scale=7.5), 6300)
    finally:
        i2i.vae.encode = orig_encode
    res.update({
        "init_image_01": init01,
        "vae_encode_in": enc_in["x"],
        "posterior_mean": enc_in["mean"],
        "posterior_std": enc_in["std"],
        "posterior_noise": draws[0][1],
        "init_latents": added["original"],
        "add_noise_noise": added["noise"],
        "add_noise_timestep": added["t"],
        "noisy_latents": added["noisy"],
        "all_timesteps": i2i.scheduler.timesteps.clone().float(),
        "sigmas": i2i.scheduler.sigmas.clone().float(),
    })
    assert len(draws) == 2, [m for m, _ in draws]
    assert torch.equal(draws[1][1], added["noise"])
    save_st(os.path.join(e2e, "sd15_img2img_euler.safetensors"), res,
            {"scheduler": sched_config_dict(i2i.scheduler), "prompt": E2E_PROMPT, "negative_prompt": E2E_NEGATIVE, "strength": 0.5,
             "num_inference_steps": 4, "guidance_scale": 7.5, "generator_seed": 6300, "noise_draws": [m for m, _ in draws],
             "note": "init_image_01 in [0,1] -> vae_encode_in = 2x-1; init_latents = scaling_factor*(posterior_mean + posterior_std*posterior_noise); noisy_latents = scheduler.add_noise(init_latents, add_noise_noise, add_noise_timestep); t_start = 4 - int(4*0.5) = 2, scheduler.set_begin_index(2)"})


# --------------------------------------------------------------------------------------------
# Tokenizer fixtures
# --------------------------------------------------------------------------------------------
def tokenizer_fixtures(out_dir, tok_sd15, tok_xl1, tok_xl2):
    cases = {
        "note": "tiny tokenizer = first %d merges of the real CLIP BPE (vocab %d; bos %d, eos %d). input_ids: padding='max_length', max_length=77, truncation=True (what the pipelines use); untruncated_ids: no padding/truncation." % (TINY_MERGES, TINY_VOCAB, BOS_ID, EOT_ID),
        "sd15_tokenizer": [tok_case(tok_sd15, p) for p in PROMPTS],
        "sdxl_tokenizer": [tok_case(tok_xl1, p) for p in PROMPTS],
        "sdxl_tokenizer_2": [tok_case(tok_xl2, p) for p in PROMPTS],
    }
    write_json(os.path.join(out_dir, "io", "tokenizer_ids.json"), cases)


def clip_bpe_fixture(out_dir):
    tmp = tempfile.mkdtemp()
    try:
        d = os.path.join(tmp, "clip")
        clip_vocab.write_tokenizer_dir(d, clip_vocab.load_merges())
        tok = CLIPTokenizer.from_pretrained(d)
        import open_clip

        oc = open_clip.tokenizer.SimpleTokenizer()
        cases = []
        for text in CLIP_BPE_CASES:
            c = tok_case(tok, text)
            oc_ids = [49406] + oc.encode(text) + [49407]
            c["open_clip_ids"] = oc_ids
            c["open_clip_agrees"] = oc_ids == c["untruncated_ids"]
            cases.append(c)
        obj = {
            "tokenizer": f"transformers {transformers.__version__} CLIPTokenizer (tokenizers backend) built from open_clip_torch's bpe_simple_vocab_16e6.txt.gz by tools/reference/diffusion/clip_vocab.py",
            "vocab_size": len(tok),
            "vocab_json_sha256": clip_vocab.sha256_file(os.path.join(d, "vocab.json")),
            "merges_txt_sha256": clip_vocab.sha256_file(os.path.join(d, "merges.txt")),
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            "max_length": 77,
            "call": "tok(text, padding='max_length', max_length=77, truncation=True).input_ids",
            "open_clip_ids": "open_clip.tokenizer.SimpleTokenizer().encode(text) wrapped in 49406/49407, untruncated (ftfy + double html.unescape + whitespace_clean + lower); open_clip_agrees says whether it equals untruncated_ids",
            "cases": cases,
        }
        write_json(os.path.join(out_dir, "clip_bpe_cases.json"), obj)
    finally:
        shutil.rmtree(tmp)


def write_json_compact_lists(path):
    """Rewrite a JSON file so that lists of scalars are on one line (smaller, diff-friendly)."""
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)

    def enc(o, ind):
        pad = " " * ind
        if isinstance(o, dict):
            if not o:
                return "{}"
            items = [f'{pad} {json.dumps(k, ensure_ascii=False)}: {enc(v, ind + 1)}' for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(o, list):
            if all(not isinstance(x, (dict, list)) for x in o):
                return json.dumps(o, ensure_ascii=False, separators=(",", ":"))
            items = [pad + " " + enc(x, ind + 1) for x in o]
            return "[\n" + ",\n".join(items) + "\n" + pad + "]"
        return json.dumps(o, ensure_ascii=False)

    with open(path, "w", encoding="utf-8") as f:
        f.write(enc(obj, 0) + "\n")


# --------------------------------------------------------------------------------------------
# KEYS.md + MANIFEST.json
# --------------------------------------------------------------------------------------------
def keys_md(path, specs):
    lines = [
        "# Tiny diffusion fixtures: weight key spec",
        "",
        "Generated by `make_fixtures.py` (do not edit). For every component of the tiny pipelines: the key names and",
        "shapes in the diffusers folder file, and the key of the same tensor in the original-LDM single-file checkpoint.",
        "All tensors are float32 (the single files also hold `...embeddings.position_ids` int64 [1,77] and, for SD1.5,",
        "`betas`/`alphas_cumprod` float32 [1000], which loaders must ignore).",
        "",
        "Transforms from diffusers to single-file: `T` = transposed, `cat0(q,k,v)` = the three diffusers tensors",
        "concatenated along dim 0 (open_clip `in_proj_*`), `[C,C]->[C,C,1,1]` = VAE attention Linear stored as 1x1 conv.",
        "Folder text encoders are stored with the hub's `text_model.` prefix; transformers >= 5.6 itself saves",
        "CLIPTextModel *without* it (`embeddings.token_embedding.weight`), so a loader should accept both.",
        "",
    ]
    for title, folder_files, mapping, configs in specs:
        lines += [f"## {title}", ""]
        inv = {}
        for ldm_key, (comp, dkeys, tr) in mapping.items():
            for i, d in enumerate(dkeys):
                note = {"": "", "T": "T", "cat0": f"cat0(q,k,v)[{i}]", "conv1x1": "[C,C]->[C,C,1,1]"}[tr]
                inv[(comp, d)] = (ldm_key, note)
        for comp, file in folder_files:
            lines += [f"### {comp}: `{file}`", ""]
            if comp in configs:
                lines += ["config: `" + json.dumps(configs[comp], sort_keys=True) + "`", ""]
            lines += ["| diffusers key | shape | single-file key | transform |", "|---|---|---|---|"]
            with safe_open(file_abs(file), "pt") as f:
                keys = list(f.keys())
                order = module_order(comp, keys, configs)
                for k in order:
                    shape = list(f.get_slice(k).get_shape())
                    lk = k[len("text_model."):] if comp in ("text_encoder",) and k.startswith("text_model.") else k
                    ldm, note = inv.get((comp, lk), inv.get((comp, k), ("(not in single file)", "")))
                    lines.append(f"| `{k}` | {shape} | `{ldm}` | {note} |")
            lines.append("")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))


_FILE_ROOT = {"root": ""}


def file_abs(rel):
    return os.path.join(_FILE_ROOT["root"], rel)


def module_order(comp, keys, configs):
    order = configs.get("_order", {}).get(comp)
    if order:
        rank = {k: i for i, k in enumerate(order)}
        return sorted(keys, key=lambda k: rank.get(k, rank.get(k[len("text_model."):], 10**9)))
    return keys


def manifest(out_dir, manifest_path):
    entries = []
    for root, _dirs, files in os.walk(out_dir):
        for fn in files:
            p = os.path.join(root, fn)
            rel = os.path.relpath(p, out_dir)
            with open(p, "rb") as f:
                data = f.read()
            e = {"path": rel, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            if fn.endswith(".safetensors") and rel.split(os.sep)[0] in ("io", "e2e", "schedulers"):
                with safe_open(p, "pt") as f:
                    e["tensors"] = {k: [str(f.get_slice(k).get_dtype()), list(f.get_slice(k).get_shape())] for k in f.keys()}
            entries.append(e)
    entries.sort(key=lambda e: e["path"])
    total = sum(e["bytes"] for e in entries)
    obj = {
        "generator": "tools/reference/diffusion/make_fixtures.py",
        "fixture_dir": "avatar-core/tests/fixtures/diffusion",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
                     "numpy": np.__version__, "safetensors": __import__("safetensors").__version__},
        "total_bytes": total,
        "files": entries,
    }
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")
    write_json_compact_lists(manifest_path)
    return total


# --------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--keys-md", default=os.path.join(HERE, "KEYS.md"))
    ap.add_argument("--manifest", default=os.path.join(HERE, "MANIFEST.json"), help="file list with sha256 + tensor shapes (kept outside the fixture folder)")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    _FILE_ROOT["root"] = out

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    seed_all(0)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)

    # ---- build + save tiny pipelines
    print("building sd15_tiny / sdxl_tiny ...", flush=True)
    sd15_mem = build_sd15()
    sdxl_mem = build_sdxl()
    sd15_dir, sdxl_dir = os.path.join(out, "sd15_tiny"), os.path.join(out, "sdxl_tiny")
    save_pipeline_folder(sd15_mem, sd15_dir, {"tokenizer": clip_vocab.EOS}, SD15_SCHEDULER_JSON)
    save_pipeline_folder(sdxl_mem, sdxl_dir, {"tokenizer": clip_vocab.EOS, "tokenizer_2": "!"}, SDXL_SCHEDULER_JSON)

    sd15 = StableDiffusionPipeline.from_pretrained(sd15_dir, local_files_only=True)
    sdxl = StableDiffusionXLPipeline.from_pretrained(sdxl_dir, local_files_only=True, add_watermarker=False)
    for p in (sd15, sdxl):
        p.set_progress_bar_config(disable=True)
        p.to(torch.float32)
    for c in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(sd15_mem, c), getattr(sd15, c), f"sd15 folder {c}")
    for c in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert_same_weights(getattr(sdxl_mem, c), getattr(sdxl, c), f"sdxl folder {c}")
    assert sdxl.tokenizer_2.pad_token == "!" and sdxl.tokenizer_2.pad_token_id == 0
    del sd15_mem, sdxl_mem

    # ---- single-file checkpoints, verified through diffusers' own single-file loader
    print("exporting + verifying single-file checkpoints ...", flush=True)
    sd15_map = export_sd15_single_file(sd15, os.path.join(out, "sd15_tiny.safetensors"))
    sdxl_map = export_sdxl_single_file(sdxl, os.path.join(out, "sdxl_tiny.safetensors"))
    tmp = tempfile.mkdtemp()
    try:
        config_only_copy(sd15_dir, os.path.join(tmp, "sd15"))
        config_only_copy(sdxl_dir, os.path.join(tmp, "sdxl"))
        sf15 = StableDiffusionPipeline.from_single_file(os.path.join(out, "sd15_tiny.safetensors"), config=os.path.join(tmp, "sd15"), local_files_only=True)
        sfxl = StableDiffusionXLPipeline.from_single_file(os.path.join(out, "sdxl_tiny.safetensors"), config=os.path.join(tmp, "sdxl"), local_files_only=True, add_watermarker=False)
    finally:
        shutil.rmtree(tmp)
    for c in ("unet", "vae", "text_encoder"):
        assert_same_weights(sd15.__getattribute__(c), sf15.__getattribute__(c), f"sd15 single-file {c}")
    for c in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert_same_weights(sdxl.__getattribute__(c), sfxl.__getattribute__(c), f"sdxl single-file {c}")
    del sf15, sfxl

    # ---- tokenizers
    print("tokenizer fixtures ...", flush=True)
    tokenizer_fixtures(out, sd15.tokenizer, sdxl.tokenizer, sdxl.tokenizer_2)
    write_json_compact_lists(os.path.join(out, "io", "tokenizer_ids.json"))
    clip_bpe_fixture(out)
    write_json_compact_lists(os.path.join(out, "clip_bpe_cases.json"))

    # ---- component IO
    print("component io ...", flush=True)
    io = os.path.join(out, "io")
    text_encoder_io(sd15.text_encoder, sd15.tokenizer, TE_PROMPTS, os.path.join(io, "sd15_text_encoder.safetensors"), "sd15.text_encoder", with_hooks=True)
    text_encoder_io(sdxl.text_encoder, sdxl.tokenizer, TE_PROMPTS, os.path.join(io, "sdxl_text_encoder.safetensors"), "sdxl.text_encoder")
    text_encoder_io(sdxl.text_encoder_2, sdxl.tokenizer_2, TE_PROMPTS, os.path.join(io, "sdxl_text_encoder_2.safetensors"), "sdxl.text_encoder_2")
    unet_io(sd15.unet, os.path.join(io, "sd15_unet.safetensors"), "sd15.unet", xl=False)
    unet_io(sdxl.unet, os.path.join(io, "sdxl_unet.safetensors"), "sdxl.unet", xl=True)
    vae_io(sd15.vae, os.path.join(io, "sd15_vae.safetensors"), "sd15.vae")
    vae_io(sdxl.vae, os.path.join(io, "sdxl_vae.safetensors"), "sdxl.vae", with_hooks=False)

    # ---- schedulers
    print("scheduler traces ...", flush=True)
    scheduler_fixtures(out)

    # ---- end to end
    print("end-to-end runs ...", flush=True)
    e2e_fixtures(sd15, sdxl, out)

    # ---- KEYS.md
    def order(m):
        return list(m.state_dict().keys())

    cfg15 = {"unet": dict(SD15_UNET), "vae": vae_config(0.18215, False), "text_encoder": sd15.text_encoder.config.to_diff_dict(),
             "_order": {"unet": order(sd15.unet), "vae": order(sd15.vae), "text_encoder": order(sd15.text_encoder)}}
    cfgxl = {"unet": dict(SDXL_UNET), "vae": vae_config(0.13025, True), "text_encoder": sdxl.text_encoder.config.to_diff_dict(),
             "text_encoder_2": sdxl.text_encoder_2.config.to_diff_dict(),
             "_order": {"unet": order(sdxl.unet), "vae": order(sdxl.vae), "text_encoder": order(sdxl.text_encoder), "text_encoder_2": order(sdxl.text_encoder_2)}}
    for c in (cfg15, cfgxl):
        for k in ("text_encoder", "text_encoder_2"):
            if k in c:
                c[k] = {kk: vv for kk, vv in c[k].items() if kk not in ("transformers_version", "architectures", "dtype")}
    keys_md(args.keys_md, [
        ("sd15_tiny", [("unet", "sd15_tiny/unet/diffusion_pytorch_model.safetensors"), ("vae", "sd15_tiny/vae/diffusion_pytorch_model.safetensors"),
                       ("text_encoder", "sd15_tiny/text_encoder/model.safetensors")], sd15_map, cfg15),
        ("sdxl_tiny", [("unet", "sdxl_tiny/unet/diffusion_pytorch_model.safetensors"), ("vae", "sdxl_tiny/vae/diffusion_pytorch_model.safetensors"),
                       ("text_encoder", "sdxl_tiny/text_encoder/model.safetensors"), ("text_encoder_2", "sdxl_tiny/text_encoder_2/model.safetensors")], sdxl_map, cfgxl),
    ])

    total = manifest(out, args.manifest)
    print(f"done: {out} ({total} bytes in files)")


if __name__ == "__main__":
    main()
