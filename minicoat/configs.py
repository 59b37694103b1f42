"""The network's configuration: one dataclass drives every variant, presets by name.

CoAtNet (paper section 2.2, table 3) is a stem S0 of two 3x3 convolutions followed by four
stages S1-S4. Each stage is made of MBConv blocks ("C") or Transformer blocks with relative
attention ("T"); its first block halves the resolution (stride 2) and changes the width.
``layout`` picks the stage types: the paper studies C-C-C-C, C-C-C-T, C-C-T-T (CoAtNet),
C-T-T-T and ViT_REL (a patchifying stem, then Transformer blocks only).

Where the paper is silent, each option says what it follows and the default is the paper's.
"""

import dataclasses
import json
import math
from dataclasses import dataclass

LAYOUTS = ("CCCC", "CCCT", "CCTT", "CTTT", "VIT_REL")


@dataclass(frozen=True)
class CoAtNetConfig:
    """Everything that determines a network's parameters and its forward pass.

    Attributes:
        name: a label (the preset name, or "custom").
        layout: stage types of S1-S4 as four letters of "C" (MBConv) / "T" (Transformer),
            e.g. "CCTT", or "VIT_REL" (patchify stem to the S3 grid, then only Transformer
            blocks: ``depths[1] + depths[2] + depths[3]`` blocks of width ``channels[3]`` and
            ``depths[4]`` of width ``channels[4]``).
        depths: number of layers of S0 (the stem's convolutions, >= 1) and blocks of S1-S4.
        channels: widths D0..D4 of S0..S4.
        strides: downsampling factor (1 or 2) of S0..S4; the paper uses 2 everywhere (an
            input of 224 becomes a 7x7 grid at S4). Small images use 1s to keep a grid that
            attention can work on. The image size must be divisible by their product.
        image_size: input height and width (an int for square images, or (h, w)).
        in_channels: input channels (3 for RGB, 1 for digits / MNIST).
        num_classes: width of the classification head.
        head_hidden: width of a pre-logits layer (linear + tanh) between the pooled features
            and the classifier, 0 for none. The paper-size presets use ``channels[4]``, as
            timm's paper-style CoAtNet configs do (``head_hidden_size``); that layer is what
            brings CoAtNet-0 to the paper's 25M parameters.
        head_dim: attention head size (paper: 32); heads = block width / head_dim.
        mbconv_expand: MBConv inverted-bottleneck expansion (paper: 4), of the output width.
        ffn_expand: Transformer FFN expansion (paper: 4).
        se_ratio: squeeze-excitation bottleneck, as a fraction of the width ``se_basis``
            names (paper: 0.25, following EfficientNet).
        se_basis: the width ``se_ratio`` is a fraction of: ``"input"``, the block's input
            width (EfficientNet's rule, minicoat's default) or ``"output"``, its output width
            (timm's CoAtNets: ``rd_ratio`` of ``out_chs`` in ``MbConvBlock``). They differ only
            in the first block of a stage.
        se_act: squeeze-excitation's hidden activation, ``"gelu"`` (GELU everywhere, paper
            appendix A.1) or ``"silu"`` (EfficientNet's SE, and timm's ``attn_act_layer``).
        shortcut_proj: when a block's shortcut has a 1x1 projection: ``"always"`` for every
            block that downsamples or widens (paper: ``Proj(Pool(x))``) or ``"width"`` only
            when the width changes, a pool alone otherwise (timm's ``Downsample2d``; it
            matters where a stage keeps its input's width, CoAtNet-2's and -3's S1).
        stem_bias: whether the stem's last 3x3 convolution has a bias (minicoat's default:
            it feeds S1 with no norm in between); timm's CoAtNets have none (``stem_bias``).
        ln_eps: LayerNorm's epsilon in the Transformer blocks and the head (PyTorch's
            default 1e-5; timm's CoAtNets use 1e-6).
        variant: "pre" (sum-then-softmax, the paper's choice) or "post" (softmax-then-sum).
        pool: shortcut pool of downsampling blocks: "max" (paper) or "avg" (timm).
        stride_at: where an MBConv downsampling block strides: "expand" (the first 1x1
            convolution, paper appendix A.1) or "depthwise" (the 3x3, as timm does).
        gelu: "none" for the exact erf GELU (paper), "tanh" for the faster approximation.
    """

    name: str = "custom"
    layout: str = "CCTT"
    depths: tuple = (2, 2, 3, 5, 2)
    channels: tuple = (64, 96, 192, 384, 768)
    strides: tuple = (2, 2, 2, 2, 2)
    image_size: object = 224
    in_channels: int = 3
    num_classes: int = 1000
    head_hidden: int = 0
    head_dim: int = 32
    mbconv_expand: int = 4
    ffn_expand: int = 4
    se_ratio: float = 0.25
    se_basis: str = "input"
    se_act: str = "gelu"
    ln_eps: float = 1e-5
    shortcut_proj: str = "always"
    stem_bias: bool = True
    variant: str = "pre"
    pool: str = "max"
    stride_at: str = "expand"
    gelu: str = "none"

    def __post_init__(self):
        import numbers
        from collections.abc import Iterable

        # Counts must be integers: 2.7 blocks or 1.5 channels is refused, never truncated.
        # NumPy integers are accepted (numbers.Integral) and become Python ints; bools are not.
        def integer(name, value):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name} must be an integer, got {value!r} "
                                 f"({type(value).__name__})")
            return int(value)

        def integers(name, value):
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                raise ValueError(f"{name} must be a sequence of integers, got {value!r}")
            return tuple(integer(f"{name}[{i}]", v) for i, v in enumerate(value))

        # Normalise lists (e.g. from JSON) to tuples so configs compare and hash by value.
        for name in ("depths", "channels", "strides"):
            object.__setattr__(self, name, integers(name, getattr(self, name)))
        size = self.image_size
        if isinstance(size, numbers.Number):
            size = (integer("image_size", size),) * 2
        object.__setattr__(self, "image_size", integers("image_size", size))
        for name in ("in_channels", "num_classes", "head_hidden", "head_dim", "mbconv_expand",
                     "ffn_expand"):
            object.__setattr__(self, name, integer(name, getattr(self, name)))
        se = self.se_ratio
        if isinstance(se, bool) or not isinstance(se, numbers.Real) or not math.isfinite(se):
            raise ValueError(f"se_ratio must be a finite number in (0, 1], got {se!r}")
        eps = self.ln_eps
        if (isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps)
                or not 0 < eps < 1):
            raise ValueError(f"ln_eps must be a positive number below 1, got {eps!r}")
        object.__setattr__(self, "ln_eps", float(eps))
        if not isinstance(self.stem_bias, bool):
            raise ValueError(f"stem_bias must be True or False, got {self.stem_bias!r}")
        for name in ("name", "layout", "variant", "pool", "stride_at", "gelu", "se_basis",
                     "se_act", "shortcut_proj"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        self.validate()

    # -- derived quantities --------------------------------------------------------------

    @property
    def stage_types(self):
        """The block type of S1..S4, e.g. ("C", "C", "T", "T"); VIT_REL gives ("T",) * 4."""
        return ("T",) * 4 if self.layout == "VIT_REL" else tuple(self.layout)

    def grid(self, stage):
        """Feature-map size (h, w) at the output of stage ``stage`` (0 = stem .. 4)."""
        factor = math.prod(self.strides[: stage + 1])
        return (self.image_size[0] // factor, self.image_size[1] // factor)

    def to_dict(self):
        """A JSON-ready dict (tuples become lists); ``from_dict`` inverts it."""
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d):
        """Rebuild a config from ``to_dict()`` output; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown config fields {unknown}; expected a subset of {sorted(known)}"
            )
        return cls(**d)

    def replace(self, **changes):
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # -- validation ----------------------------------------------------------------------

    def validate(self):
        """Raise ``ValueError`` with what was expected if the config cannot build a network."""
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        for name in ("depths", "channels", "strides"):
            if len(getattr(self, name)) != 5:
                raise ValueError(f"{name} must have 5 entries (S0..S4), got {getattr(self, name)}")
        if self.depths[0] < 1 or min(self.depths[1:]) < 1:
            raise ValueError(f"depths must be >= 1 for every stage, got {self.depths}")
        if min(self.channels) < 1:
            raise ValueError(f"channels must be positive, got {self.channels}")
        if any(s not in (1, 2) for s in self.strides):
            raise ValueError(f"strides must each be 1 or 2, got {self.strides}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be a positive int or (h, w), got {self.image_size}")
        total = math.prod(self.strides)
        if self.image_size[0] % total or self.image_size[1] % total:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by the product of the strides "
                f"{self.strides} = {total}; change image_size or use stride 1 in some stage"
            )
        # VIT_REL uses only the widths of S3 and S4 (its patch stem replaces S0-S2).
        used = (3, 4) if self.layout == "VIT_REL" else range(1, 5)
        for stage in used:
            if self.stage_types[stage - 1] == "T" and self.channels[stage] % self.head_dim:
                raise ValueError(
                    f"stage S{stage} is a Transformer stage of width {self.channels[stage]}, "
                    f"which head_dim={self.head_dim} must divide (heads = width / head_dim)"
                )
        choices = {
            "variant": ("pre", "post"),
            "pool": ("max", "avg"),
            "stride_at": ("expand", "depthwise"),
            "gelu": ("none", "tanh"),
            "se_basis": ("input", "output"),
            "se_act": ("gelu", "silu"),
            "shortcut_proj": ("always", "width"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.in_channels < 1 or self.num_classes < 2 or self.head_dim < 1:
            raise ValueError("in_channels >= 1, num_classes >= 2 and head_dim >= 1 are required")
        if self.head_hidden < 0:
            raise ValueError(
                f"head_hidden must be >= 0 (0: no pre-logits layer), got {self.head_hidden}"
            )
        if self.mbconv_expand < 1 or self.ffn_expand < 1 or not 0 < self.se_ratio <= 1:
            raise ValueError("mbconv_expand and ffn_expand must be >= 1, se_ratio in (0, 1]")


_PAPER = dict(strides=(2, 2, 2, 2, 2), image_size=224, in_channels=3, num_classes=1000)

PRESETS = {
    # Paper, table 3 (L = blocks per stage, D = widths), all C-C-T-T.
    "coatnet-0": dict(
        depths=(2, 2, 3, 5, 2), channels=(64, 96, 192, 384, 768), head_hidden=768, **_PAPER
    ),
    "coatnet-1": dict(
        depths=(2, 2, 6, 14, 2), channels=(64, 96, 192, 384, 768), head_hidden=768, **_PAPER
    ),
    "coatnet-2": dict(
        depths=(2, 2, 6, 14, 2), channels=(128, 128, 256, 512, 1024), head_hidden=1024, **_PAPER
    ),
    "coatnet-3": dict(
        depths=(2, 2, 6, 14, 2), channels=(192, 192, 384, 768, 1536), head_hidden=1536, **_PAPER
    ),
    "coatnet-4": dict(
        depths=(2, 2, 12, 28, 2), channels=(192, 192, 384, 768, 1536), head_hidden=1536, **_PAPER
    ),
    # Small presets for small images (not in the paper): the stage structure is the paper's,
    # with fewer, narrower blocks and stride 1 where a 2 would shrink the grid to nothing.
    # 8x8 UCI digits: grids 8 -> 8 -> 8 -> 4 -> 4 -> 2.
    "coatnet-digits": dict(
        depths=(2, 1, 1, 1, 1),
        channels=(32, 32, 64, 64, 128),
        strides=(1, 1, 2, 1, 2),
        image_size=8,
        in_channels=1,
        num_classes=10,
    ),
    # 28x28 MNIST / Fashion-MNIST: grids 28 -> 14 -> 14 -> 7 -> 7 -> 7 (49 tokens in S3, S4).
    "coatnet-mnist": dict(
        depths=(2, 1, 1, 2, 1),
        channels=(32, 32, 64, 64, 128),
        strides=(2, 1, 2, 1, 1),
        image_size=28,
        in_channels=1,
        num_classes=10,
    ),
    # 32x32 CIFAR-10 and the benchmark: stem 32, MBConv 64/96, Transformer 192/384.
    "coatnet-cifar": dict(
        depths=(2, 2, 2, 2, 1),
        channels=(32, 64, 96, 192, 384),
        strides=(1, 2, 2, 2, 2),
        image_size=32,
        in_channels=3,
        num_classes=10,
    ),
    # 16x16 synthetic shapes (datasets.make_shapes): grids 16 -> 16 -> 8 -> 4 -> 4 -> 2.
    "coatnet-shapes": dict(
        depths=(2, 1, 1, 1, 1),
        channels=(32, 32, 64, 64, 128),
        strides=(1, 2, 2, 1, 2),
        image_size=16,
        in_channels=1,
        num_classes=4,
    ),
}


def config(name, **overrides):
    """A preset by name, optionally with fields overridden (e.g. ``layout="CTTT"``).

    Presets: ``coatnet-0`` .. ``coatnet-4`` (paper, table 3; 224x224, 1000 classes) and the
    small presets ``coatnet-digits`` (8x8x1), ``coatnet-mnist`` (28x28x1),
    ``coatnet-cifar`` (32x32x3) and ``coatnet-shapes`` (16x16x1).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return CoAtNetConfig(name=name, **{**PRESETS[name], **overrides})
