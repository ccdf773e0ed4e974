"""ScratchViT: a small Vision Transformer family for training from scratch, as a Hugging Face model.

The baseline (learned position table covering CLS, linear patches, LayerNorm, GELU MLP, CLS pooling) is
the standard ViT of Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words" (arXiv:2010.11929), and
loads the weights of transformers' ``ViTForImageClassification``. The variant axes are the choices that
the from-scratch CIFAR studies ablate:

- ``patch_embedding``: ``linear`` (kernel = stride = patch), ``overlapping`` (kernel 2p, stride p,
  padding p/2: the same token grid, with neighbouring patches sharing pixels, as in CvT/Swin-style stems) or
  ``conv`` (a convolutional stem: log2(p) 3x3 stride-2 convolutions with BatchNorm and ReLU, then a 1x1
  projection; Xiao et al. 2021, "Early Convolutions Help Transformers See Better", arXiv:2106.14881);
- ``norm_type``: ``layernorm`` or ``rmsnorm`` (Zhang & Sennrich 2019, arXiv:1910.07467);
- ``qk_norm``: normalise queries and keys per head (Dehghani et al. 2023, arXiv:2302.05442);
- ``ffn_type``: ``mlp`` (GELU) or ``swiglu`` (Shazeer 2020, arXiv:2002.05202), hidden width 2/3 of
  ``intermediate_size`` so parameters stay within 2% of the MLP;
- ``position_embedding``: ``learned``, ``sincos1d``, ``sincos2d`` (Beyer et al. 2022 "Better plain ViT
  baselines", arXiv:2205.01580), ``rope`` (2D axial rotary on patch queries/keys, Heo et al. 2024,
  arXiv:2403.13298) or ``none``: one module per scheme (``POSITION_SCHEMES``), all with the same call shape;
- ``num_registers``: extra learnable tokens dropped before pooling (Darcet et al. 2024, arXiv:2309.16588);
- ``pooling``: ``cls`` or ``mean`` over patch tokens.

This file depends on torch and transformers only: it is shipped next to saved weights (``auto_map``) so
that a model dir loads with ``trust_remote_code=True`` where hfvision is not installed.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

PATCH_EMBEDDINGS = ("linear", "overlapping", "conv")
NORM_TYPES = ("layernorm", "rmsnorm")
FFN_TYPES = ("mlp", "swiglu")
POOLINGS = ("cls", "mean")


def _one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"ScratchViTConfig.{name}: '{value}' is not one of {', '.join(allowed)}")


class ScratchViTConfig(PretrainedConfig):
    r"""Configuration of a :class:`ScratchViTForImageClassification`. Field names follow transformers' ViT.

    ``cls_position_embedding`` defaults to ``None``: true for ``learned`` and ``sincos1d`` (the schemes that
    can give CLS a position code), false otherwise; asking for true with another scheme is an error.
    """

    model_type = "scratch_vit"

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        num_channels: int = 3,
        hidden_size: int = 192,
        num_hidden_layers: int = 6,
        num_attention_heads: int = 3,
        intermediate_size: Optional[int] = None,
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        patch_embedding: str = "linear",
        norm_type: str = "layernorm",
        qk_norm: bool = False,
        ffn_type: str = "mlp",
        position_embedding: str = "learned",
        cls_position_embedding: Optional[bool] = None,
        num_registers: int = 0,
        pooling: str = "cls",
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = 4 * hidden_size if intermediate_size is None else intermediate_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.drop_path_rate = drop_path_rate
        self.layer_norm_eps = layer_norm_eps
        self.qkv_bias = qkv_bias
        self.patch_embedding = patch_embedding
        self.norm_type = norm_type
        self.qk_norm = qk_norm
        self.ffn_type = ffn_type
        self.position_embedding = position_embedding
        if cls_position_embedding is None:
            cls_position_embedding = position_embedding in CLS_POSITION_SCHEMES
        self.cls_position_embedding = cls_position_embedding
        self.num_registers = num_registers
        self.pooling = pooling
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
        _one_of("patch_embedding", self.patch_embedding, PATCH_EMBEDDINGS)
        _one_of("norm_type", self.norm_type, NORM_TYPES)
        _one_of("ffn_type", self.ffn_type, FFN_TYPES)
        resolve_position_scheme(self.position_embedding)
        _one_of("pooling", self.pooling, POOLINGS)
        for name in ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers",
                     "num_attention_heads", "intermediate_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ScratchViTConfig.{name}: expected a positive integer, got {value!r}")
        if not isinstance(self.num_registers, int) or self.num_registers < 0:
            raise ValueError(f"ScratchViTConfig.num_registers: expected an integer >= 0, got {self.num_registers!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"ScratchViTConfig: image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"ScratchViTConfig: hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        head_dim = self.hidden_size // self.num_attention_heads
        if self.position_embedding == "rope" and head_dim % 4:
            raise ValueError(f"ScratchViTConfig: rope needs a head size divisible by 4 (two axes of sin/cos "
                             f"pairs), got hidden_size/heads = {head_dim}")
        if self.position_embedding == "sincos2d" and self.hidden_size % 4:
            raise ValueError(f"ScratchViTConfig: sincos2d needs hidden_size divisible by 4, got {self.hidden_size}")
        if self.position_embedding == "sincos1d" and self.hidden_size % 2:
            raise ValueError(f"ScratchViTConfig: sincos1d needs an even hidden_size, got {self.hidden_size}")
        if self.patch_embedding == "overlapping" and self.patch_size < 2:
            raise ValueError("ScratchViTConfig: overlapping patch_embedding needs patch_size >= 2")
        if self.patch_embedding == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ValueError(f"ScratchViTConfig: conv patch_embedding needs a patch_size that is a power of 2 "
                             f"(one stride-2 convolution per halving), got {self.patch_size}")
        if self.cls_position_embedding and self.position_embedding not in CLS_POSITION_SCHEMES:
            raise ValueError(f"ScratchViTConfig: cls_position_embedding=true needs position_embedding in "
                             f"{', '.join(CLS_POSITION_SCHEMES)}, got '{self.position_embedding}'")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"ScratchViTConfig.{name}: expected a number in [0, 1), got {value!r}")

    @property
    def num_prefix_tokens(self) -> int:
        """CLS plus registers: the tokens in front of the patch tokens."""
        return 1 + self.num_registers


# ----------------------------------------------------------------------------------------------
# Position tables (pure functions), rotary embedding, and the position schemes


def sincos_1d(num_positions: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(num_positions, dim) table of Vaswani et al.: sin in the first half, cos in the second."""
    omega = 1.0 / temperature ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(height: int, width: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(height * width, dim) table as in "Better plain ViT baselines": a 1D code per axis, concatenated."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).float()


def rope_2d_angles(height: int, width: int, head_dim: int, theta: float = 100.0) -> torch.Tensor:
    """(height * width, head_dim / 2) rotation angles: half the pairs turn with x, half with y (axial RoPE)."""
    quarter = head_dim // 4
    freqs = 1.0 / theta ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    angles = torch.cat([x.flatten()[:, None] * freqs, y.flatten()[:, None] * freqs], dim=1)
    return angles.float()


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of the last dim of ``x`` (..., N, head_dim) by ``angles`` (N, head_dim/2)."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (..., N, head_dim/2, 2)
    cos, sin = angles.cos(), angles.sin()
    rotated = torch.stack([pairs[..., 0] * cos - pairs[..., 1] * sin,
                           pairs[..., 0] * sin + pairs[..., 1] * cos], dim=-1)
    return rotated.flatten(-2).type_as(x)


def resample_grid(table: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubically resample a (1, h*w, D) patch position table to another grid."""
    if old_grid == new_grid:
        return table
    grid = table.reshape(1, *old_grid, -1).permute(0, 3, 1, 2)  # (1, D, h, w)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).flatten(1, 2)


class NoPositions(nn.Module):
    """``none``: tokens carry no position code. Also the call shape that every scheme shares:

    - ``scheme.add_to(patches (B, h*w, D), cls (B, 1, D), grid, learned_table)`` -> ``(patches, cls)`` with the
      absolute position code added. ``learned_table`` is the model's ``position_table`` (None unless ``learned``):
      a parameter of the model, not of the scheme, so that it is saved as ``vit.position_table``, the name that
      ScratchViT dirs have always used (transformers' ViT calls it ``vit.embeddings.position_embeddings``; see
      ``vit_state_dict_from_transformers``).
    - ``scheme.rope_angles(grid)`` -> (h*w, head_dim/2) rotary angles for the patch queries and keys, or None.

    Each scheme is built with what it uses (``POSITION_SCHEMES``).
    """

    def add_to(self, patches: torch.Tensor, cls: torch.Tensor, grid: tuple[int, int],
               learned_table: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        return patches, cls

    def rope_angles(self, grid: tuple[int, int]) -> Optional[torch.Tensor]:
        return None


class LearnedPositions(NoPositions):
    """``learned``: the model's (1, [1 +] h*w, D) table (a CLS row first when ``cls_position``, the transformers ViT
    layout), resampled bicubically when the grid differs from the table's (at run time and by ``resize_image``)."""

    def __init__(self, *, cls_position: bool):
        super().__init__()
        self.num_cls_rows = int(cls_position)

    def table_shape(self, grid: tuple[int, int], dim: int) -> tuple[int, int, int]:
        return 1, self.num_cls_rows + grid[0] * grid[1], dim

    def resample(self, table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The table for another (square) grid: the CLS row kept as it is, the patch rows resampled bicubically."""
        side = math.isqrt(table.shape[1] - self.num_cls_rows)  # tables are square: image_size is one number
        if (side, side) == tuple(grid):
            return table
        patches = resample_grid(table[:, self.num_cls_rows:], (side, side), grid)
        return torch.cat([table[:, :self.num_cls_rows], patches], dim=1)

    def add_to(self, patches, cls, grid, learned_table=None):
        table = self.resample(learned_table, grid)
        if self.num_cls_rows:
            cls = cls + table[:, :1]
        return patches + table[:, self.num_cls_rows:].to(patches.dtype), cls


class FixedTablePositions(NoPositions):
    """A scheme whose code is a fixed function of the grid, ``compute(grid)`` (float64 maths, float32 result). Each
    grid's table is computed once and kept as a non-persistent buffer ``table_{h}x{w}``: it moves with
    ``.to(device)`` and is not saved. The configured grid's table is built with the model; another grid's (an
    input of another size) on its first use."""

    def __init__(self):
        super().__init__()
        self.grids: dict[str, tuple[int, int]] = {}  # buffer name -> grid

    def compute(self, grid: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def table(self, grid: tuple[int, int]) -> torch.Tensor:
        name = f"table_{grid[0]}x{grid[1]}"
        if name not in self.grids:
            table = self.compute(grid)
            cached = next(self.buffers(), None)  # a new grid's table goes where the others are
            self.register_buffer(name, table if cached is None else table.to(cached.device), persistent=False)
            self.grids[name] = tuple(grid)
        return self.get_buffer(name)

    @torch.no_grad()
    def recompute_tables(self) -> None:
        """Fill every cached table again: ``from_pretrained`` builds the model on the meta device and leaves
        non-persistent buffers empty."""
        for name, grid in self.grids.items():
            self.get_buffer(name).copy_(self.compute(grid))


class SinCos1DPositions(FixedTablePositions):
    """``sincos1d``: the 1D sin-cos table over the raster order of patches, index 0 for CLS when ``cls_position``."""

    def __init__(self, *, grid: tuple[int, int], dim: int, cls_position: bool):
        super().__init__()
        self.dim, self.num_cls_rows = dim, int(cls_position)
        self.table(grid)

    def compute(self, grid):
        return sincos_1d(self.num_cls_rows + grid[0] * grid[1], self.dim)

    def add_to(self, patches, cls, grid, learned_table=None):
        table = self.table(grid).to(patches.dtype)
        if self.num_cls_rows:
            cls = cls + table[:1]
        return patches + table[self.num_cls_rows:], cls


class SinCos2DPositions(FixedTablePositions):
    """``sincos2d``: the 2D sin-cos table of "Better plain ViT baselines" on patches; CLS has no code."""

    def __init__(self, *, grid: tuple[int, int], dim: int):
        super().__init__()
        self.dim = dim
        self.table(grid)

    def compute(self, grid):
        return sincos_2d(*grid, self.dim)

    def add_to(self, patches, cls, grid, learned_table=None):
        return patches + self.table(grid).to(patches.dtype), cls


class RotaryPositions(FixedTablePositions):
    """``rope``: nothing is added to tokens; attention rotates patch queries and keys by these angles."""

    def __init__(self, *, grid: tuple[int, int], head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.table(grid)

    def compute(self, grid):
        return rope_2d_angles(*grid, self.head_dim)

    def rope_angles(self, grid):
        return self.table(grid)


# name -> the scheme for a config and its patch grid, built with the arguments it uses
POSITION_SCHEMES: dict[str, Callable[[ScratchViTConfig, tuple[int, int]], NoPositions]] = {
    "learned": lambda config, grid: LearnedPositions(cls_position=config.cls_position_embedding),
    "sincos1d": lambda config, grid: SinCos1DPositions(grid=grid, dim=config.hidden_size,
                                                       cls_position=config.cls_position_embedding),
    "sincos2d": lambda config, grid: SinCos2DPositions(grid=grid, dim=config.hidden_size),
    "rope": lambda config, grid: RotaryPositions(grid=grid, head_dim=config.hidden_size // config.num_attention_heads),
    "none": lambda config, grid: NoPositions(),
}
# The schemes with a natural code for the CLS token: a row of a learned table, or index 0 of 1D.
CLS_POSITION_SCHEMES = ("learned", "sincos1d")


def resolve_position_scheme(name: str) -> Callable[[ScratchViTConfig, tuple[int, int]], NoPositions]:
    if name not in POSITION_SCHEMES:
        raise ValueError(f"ScratchViTConfig.position_embedding: '{name}' is not one of {', '.join(POSITION_SCHEMES)}")
    return POSITION_SCHEMES[name]


# ----------------------------------------------------------------------------------------------
# Layers


def make_norm(norm_type: str, dim: int, eps: float) -> nn.Module:
    return nn.LayerNorm(dim, eps=eps) if norm_type == "layernorm" else nn.RMSNorm(dim, eps=eps)


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016): drops the residual branch, rescales the kept ones."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class PatchEmbedding(nn.Module):
    """Pixels (B, C, H, W) -> patch tokens (B, H/p * W/p, D) and the grid (H/p, W/p)."""

    def __init__(self, *, kind: str, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        self.stem = conv_stem(patch_size, in_channels, dim) if kind == "conv" else None
        if self.stem is not None:
            in_channels, patch_size = self.stem[-3].out_channels, 1
        # Overlapping: kernel p + 2*(p//2) with padding p//2 keeps the grid at H/p while patches overlap.
        padding = patch_size // 2 if kind == "overlapping" else 0
        self.projection = nn.Conv2d(in_channels, dim, kernel_size=patch_size + 2 * padding,
                                    stride=patch_size, padding=padding)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = pixel_values if self.stem is None else self.stem(pixel_values)
        x = self.projection(x)  # (B, D, h, w)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


def conv_stem(patch_size: int, in_channels: int, dim: int) -> nn.Sequential:
    """log2(patch_size) 3x3 stride-2 convolutions, channels doubling up to ``dim`` (Xiao et al. 2021); the
    1x1 projection to ``dim`` follows in :class:`PatchEmbedding`."""
    halvings = patch_size.bit_length() - 1
    layers: list[nn.Module] = []
    for i in range(halvings):
        out_channels = max(dim // 2 ** (halvings - 1 - i), 16)
        layers += [nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
                   nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        in_channels = out_channels
    return nn.Sequential(*layers)


class Attention(nn.Module):
    def __init__(self, *, dim: int, num_heads: int, qkv_bias: bool, qk_norm: bool, norm_type: str, eps: float,
                 attn_drop: float, proj_drop: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = make_norm(norm_type, self.head_dim, eps) if qk_norm else nn.Identity()
        self.k_norm = make_norm(norm_type, self.head_dim, eps) if qk_norm else nn.Identity()
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, rope_angles: Optional[torch.Tensor], num_prefix_tokens: int,
                return_attention: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope_angles is not None:  # rotate patch tokens only; CLS and registers have no position
            q = torch.cat([q[:, :, :num_prefix_tokens], apply_rope(q[:, :, num_prefix_tokens:], rope_angles)], dim=2)
            k = torch.cat([k[:, :, :num_prefix_tokens], apply_rope(k[:, :, num_prefix_tokens:], rope_angles)], dim=2)
        dropout = self.attn_drop if self.training else 0.0
        if return_attention:  # explicit softmax: only where explanation needs the weights
            weights = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(dim=-1)
            out = F.dropout(weights, dropout, self.training) @ v
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj_drop(self.proj(out)), weights


class FeedForward(nn.Module):
    """GELU MLP, or SwiGLU with hidden width 2/3 of ``hidden`` so the parameter count stays matched."""

    def __init__(self, *, kind: str, dim: int, hidden: int, drop: float):
        super().__init__()
        self.gated = kind == "swiglu"
        if self.gated:
            hidden = int(round(2 * hidden / 3))
        self.fc1 = nn.Linear(dim, 2 * hidden if self.gated else hidden)
        self.act = nn.SiLU() if self.gated else nn.GELU()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, value = self.fc1(x).chunk(2, dim=-1)
            x = self.act(gate) * value
        else:
            x = self.act(self.fc1(x))
        return self.drop(self.fc2(self.drop(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, config: ScratchViTConfig, drop_path: float):
        super().__init__()
        dim, eps = config.hidden_size, config.layer_norm_eps
        self.norm1 = make_norm(config.norm_type, dim, eps)
        self.attn = Attention(dim=dim, num_heads=config.num_attention_heads, qkv_bias=config.qkv_bias,
                              qk_norm=config.qk_norm, norm_type=config.norm_type, eps=eps,
                              attn_drop=config.attention_probs_dropout_prob, proj_drop=config.hidden_dropout_prob)
        self.norm2 = make_norm(config.norm_type, dim, eps)
        self.ffn = FeedForward(kind=config.ffn_type, dim=dim, hidden=config.intermediate_size,
                               drop=config.hidden_dropout_prob)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, rope_angles=None, num_prefix_tokens=1, return_attention=False):
        attended, weights = self.attn(self.norm1(x), rope_angles, num_prefix_tokens, return_attention)
        x = x + self.drop_path(attended)
        x = x + self.drop_path(self.ffn(self.norm2(x)))
        return x, weights


# ----------------------------------------------------------------------------------------------
# Models


class ScratchViTPreTrainedModel(PreTrainedModel):
    config_class = ScratchViTConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    _no_split_modules = ["Block"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            if module.weight is not None:
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, ScratchViTModel):
            nn.init.trunc_normal_(module.cls_token, std=std)
            if module.registers is not None:
                nn.init.trunc_normal_(module.registers, std=std)
            if module.position_table is not None:
                nn.init.trunc_normal_(module.position_table, std=std)
        elif isinstance(module, FixedTablePositions):
            module.recompute_tables()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """``from_pretrained(dir, image_size=64)`` (or a config with another ``image_size``) loads the weights at
        their saved size, then resamples the learned position table to the new patch grid."""
        config = kwargs.get("config")
        target = kwargs.pop("image_size", None) or getattr(config, "image_size", None)
        saved = ScratchViTConfig.from_pretrained(pretrained_model_name_or_path,
                                                 **{k: kwargs[k] for k in ("revision", "token", "cache_dir") if k in kwargs})
        if target is None or target == saved.image_size:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if isinstance(config, PretrainedConfig):
            config.image_size = saved.image_size
        else:
            kwargs["config"] = saved
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model.resize_image(target)
        return model

    def resize_image(self, image_size: int) -> None:
        """Set the input size; a learned position table is resampled as at run time (CLS row kept)."""
        base = self.base_model
        config = self.config
        if image_size % config.patch_size:
            raise ValueError(f"ScratchViTConfig: image_size {image_size} is not divisible by patch_size {config.patch_size}")
        new_grid = (image_size // config.patch_size,) * 2
        if base.position_table is not None:
            base.position_table = nn.Parameter(base.positions.resample(base.position_table.data, new_grid))
        config.image_size = image_size


class ScratchViTModel(ScratchViTPreTrainedModel):
    """Patch embedding, prefix tokens, position scheme, blocks, final norm; pooled output per ``pooling``."""

    def __init__(self, config: ScratchViTConfig):
        super().__init__(config)
        dim = config.hidden_size
        grid = (config.image_size // config.patch_size,) * 2
        self.patch_embed = PatchEmbedding(kind=config.patch_embedding, patch_size=config.patch_size,
                                          in_channels=config.num_channels, dim=dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.registers = nn.Parameter(torch.zeros(1, config.num_registers, dim)) if config.num_registers else None
        self.positions = resolve_position_scheme(config.position_embedding)(config, grid)
        # The learned table lives here, not in self.positions, so that its saved name stays vit.position_table.
        self.position_table = None
        if isinstance(self.positions, LearnedPositions):
            self.position_table = nn.Parameter(torch.zeros(self.positions.table_shape(grid, dim)))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers).tolist()
        self.blocks = nn.ModuleList(Block(config, rate) for rate in rates)
        self.norm = make_norm(config.norm_type, dim, config.layer_norm_eps)
        self.post_init()

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "registers", "position_table"}

    def forward(self, pixel_values: torch.Tensor, output_attentions: bool = False,
                output_hidden_states: bool = False, return_dict: Optional[bool] = None, **kwargs):
        patches, grid = self.patch_embed(pixel_values)
        batch = patches.shape[0]
        cls = self.cls_token.expand(batch, -1, -1)
        # a method, not a module call: module hooks would see the learned table (a parameter) as an input, and
        # torch's FLOP counter cannot track a leaf that requires grad under no_grad
        patches, cls = self.positions.add_to(patches, cls, grid, self.position_table)
        prefix = [cls] if self.registers is None else [cls, self.registers.expand(batch, -1, -1)]
        x = self.dropout(torch.cat(prefix + [patches], dim=1))  # (B, prefix + h*w, D)
        rope_angles = self.positions.rope_angles(grid)
        hidden_states, attentions = [], []
        for block in self.blocks:
            if output_hidden_states:
                hidden_states.append(x)
            x, weights = block(x, rope_angles, self.config.num_prefix_tokens, output_attentions)
            if output_attentions:
                attentions.append(weights)
        x = self.norm(x)
        if output_hidden_states:
            hidden_states.append(x)
        pooled = x[:, 0] if self.config.pooling == "cls" else x[:, self.config.num_prefix_tokens:].mean(dim=1)
        return BaseModelOutputWithPooling(
            last_hidden_state=x,
            pooler_output=pooled,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


class ScratchViTForImageClassification(ScratchViTPreTrainedModel):
    def __init__(self, config: ScratchViTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = ScratchViTModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def no_weight_decay(self) -> set[str]:
        return {f"vit.{name}" for name in self.vit.no_weight_decay()}

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None,
                output_attentions: bool = False, output_hidden_states: bool = False,
                return_dict: Optional[bool] = None, **kwargs):
        outputs = self.vit(pixel_values, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states)
        logits = self.classifier(outputs.pooler_output)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                     attentions=outputs.attentions)


def vit_state_dict_from_transformers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a transformers ``ViTForImageClassification`` state dict (5.x names) to ScratchViT names.

    Needs a ScratchViT with learned positions covering CLS, linear patches, LayerNorm, MLP, CLS pooling.
    """
    out = {
        "vit.cls_token": state_dict["vit.embeddings.cls_token"],
        "vit.position_table": state_dict["vit.embeddings.position_embeddings"],
        "vit.patch_embed.projection.weight": state_dict["vit.embeddings.patch_embeddings.projection.weight"],
        "vit.patch_embed.projection.bias": state_dict["vit.embeddings.patch_embeddings.projection.bias"],
        "vit.norm.weight": state_dict["vit.layernorm.weight"],
        "vit.norm.bias": state_dict["vit.layernorm.bias"],
        "classifier.weight": state_dict["classifier.weight"],
        "classifier.bias": state_dict["classifier.bias"],
    }
    layers = sorted({int(key.split(".")[2]) for key in state_dict if key.startswith("vit.layers.")})
    for i in layers:
        src, dst = f"vit.layers.{i}.", f"vit.blocks.{i}."
        for part in ("weight", "bias"):
            out[dst + f"attn.qkv.{part}"] = torch.cat(
                [state_dict[src + f"attention.{name}_proj.{part}"] for name in ("q", "k", "v")])
            out[dst + f"attn.proj.{part}"] = state_dict[src + f"attention.o_proj.{part}"]
            out[dst + f"norm1.{part}"] = state_dict[src + f"layernorm_before.{part}"]
            out[dst + f"norm2.{part}"] = state_dict[src + f"layernorm_after.{part}"]
            out[dst + f"ffn.fc1.{part}"] = state_dict[src + f"mlp.fc1.{part}"]
            out[dst + f"ffn.fc2.{part}"] = state_dict[src + f"mlp.fc2.{part}"]
    return out
