"""``minicoat convert``: timm ``.safetensors`` checkpoints <-> minicoat ``.npz`` checkpoints.

::

    minicoat convert timm.safetensors model.npz --model coatnet_0_224 [--image-size 64]
    minicoat convert model.npz timm.safetensors [--image-size 384]

The direction follows the file names. From timm, ``--model`` names the timm model
(``coatnet_0_224`` .. ``coatnet_4_224``); the classes come from the file. ``--image-size H
[W]`` runs the model at another size than the checkpoint's: its relative-bias tables are
resized (``docs/timm.md``). No torch is needed.
"""

import argparse
import os
import sys


def build_parser():
    from .timm import MODELS

    p = argparse.ArgumentParser(
        prog="minicoat convert",
        description="Convert a timm CoAtNet checkpoint (.safetensors) to a minicoat checkpoint "
                    "(.npz) or back; the direction follows the file names.")
    p.add_argument("source", help="a timm .safetensors file or a minicoat .npz checkpoint")
    p.add_argument("target", help="the file to write (.npz or .safetensors)")
    p.add_argument("--model", choices=sorted(MODELS), default=None,
                   help="the timm model of a .safetensors source (required for it)")
    p.add_argument("--image-size", type=int, nargs="+", default=None, metavar="H [W]",
                   help="run at this size: the relative-bias tables are resized (default: "
                        "224 from timm, the checkpoint's own from minicoat)")
    p.add_argument("--source-size", type=int, nargs="+", default=None, metavar="H [W]",
                   help="the size a non-square .safetensors checkpoint was made for")
    return p


def _size(values, option):
    if values is None:
        return None
    if len(values) not in (1, 2) or min(values) < 1:
        raise ValueError(f"{option} takes one or two positive integers (H [W]), got {values}")
    return tuple(values) * (2 // len(values))


def convert(source, target, model=None, image_size=None, source_size=None):
    """Convert ``source`` to ``target`` (see the module); returns the config written."""
    from ..checkpoint import load_checkpoint, save_checkpoint
    from .files import load_timm_file, save_timm_file
    from .resize import resize_rel_bias

    kinds = {os.path.splitext(path)[1].lower() for path in (source, target)}
    if kinds != {".safetensors", ".npz"}:
        raise ValueError(f"convert one .safetensors file and one .npz checkpoint, got "
                         f"{source} -> {target}")
    if source.lower().endswith(".safetensors"):
        if model is None:
            raise ValueError("--model is required to read a timm .safetensors file (which "
                             "model it is: coatnet_0_224 .. coatnet_4_224)")
        params, state, config = load_timm_file(source, model, image_size or 224, source_size)
        save_checkpoint(target, params, state, config,
                        extra={"converted_from": os.path.basename(source), "timm_model": model})
        return config
    if model is not None or source_size is not None:
        raise ValueError("--model and --source-size describe a .safetensors source; a minicoat "
                         "checkpoint carries its own config")
    ckpt = load_checkpoint(source)
    params, config = ckpt.params, ckpt.config
    if image_size is not None and tuple(image_size) != config.image_size:
        params, config = resize_rel_bias(params, config, image_size)
    save_timm_file(target, params, ckpt.state, config)
    return config


def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = convert(args.source, args.target, args.model,
                         _size(args.image_size, "--image-size"),
                         _size(args.source_size, "--source-size"))
    except (OSError, ValueError, ImportError) as err:
        print(f"minicoat convert: error: {err}".replace("\n", " "), file=sys.stderr)
        return 2
    h, w = config.image_size
    print(f"wrote {args.target} ({config.name}, {h}x{w}, {config.num_classes} classes)")
    return 0
