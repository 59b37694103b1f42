"""Which timm state-dict entry holds which minicoat array: one table, built from the plan.

Every row is ``(section, minicoat key, timm key, kind, heads)``: ``section`` is ``"params"``
or ``"state"`` (BatchNorm running statistics), the minicoat key is the dotted key of the
flattened tree (``s3.block0.attn.w_qkv``), the timm key the name in ``model.state_dict()`` of
timm's ``MaxxVit`` (``stages.2.blocks.0.attn.qkv.weight``), ``kind`` the layout conversion
(``layouts.py``). minicoat's stage ``s1..s4`` is timm's ``stages.0..3``; timm's stem
convolutions are ``conv1, conv2`` where minicoat's are ``conv0, conv1``.
"""

from ..plans import plan, stage_blocks


def _norm(section_rows, ours, theirs, batch_norm=True):
    section_rows += [("params", f"{ours}.gamma", f"{theirs}.weight", "copy", 0),
                     ("params", f"{ours}.beta", f"{theirs}.bias", "copy", 0)]
    if batch_norm:
        section_rows += [("state", f"{ours}.mean", f"{theirs}.running_mean", "copy", 0),
                         ("state", f"{ours}.var", f"{theirs}.running_var", "copy", 0)]


def _dense(rows, ours, theirs, kind="conv1x1", bias=True):
    rows.append(("params", f"{ours}.w", f"{theirs}.weight", kind, 0))
    if bias:
        rows.append(("params", f"{ours}.b", f"{theirs}.bias", "copy", 0))


def _mbconv(rows, ours, theirs, block):
    _norm(rows, f"{ours}.pre_norm", f"{theirs}.pre_norm")
    _dense(rows, f"{ours}.expand", f"{theirs}.conv1_1x1", bias=False)
    _norm(rows, f"{ours}.norm1", f"{theirs}.norm1")
    rows.append(("params", f"{ours}.dw.w", f"{theirs}.conv2_kxk.weight", "depthwise", 0))
    _norm(rows, f"{ours}.norm2", f"{theirs}.norm2")
    rows += [("params", f"{ours}.se.w_reduce", f"{theirs}.se.fc1.weight", "conv1x1", 0),
             ("params", f"{ours}.se.b_reduce", f"{theirs}.se.fc1.bias", "copy", 0),
             ("params", f"{ours}.se.w_expand", f"{theirs}.se.fc2.weight", "conv1x1", 0),
             ("params", f"{ours}.se.b_expand", f"{theirs}.se.fc2.bias", "copy", 0)]
    _dense(rows, f"{ours}.project", f"{theirs}.conv3_1x1")


def _transformer(rows, ours, theirs, block):
    # a downsampling block's first norm is followed by its pool: timm's nn.Sequential(norm, down)
    norm1 = f"{theirs}.norm1.norm" if block.stride == 2 else f"{theirs}.norm1"
    _norm(rows, f"{ours}.norm1", norm1, batch_norm=False)
    heads = block.heads
    rows += [("params", f"{ours}.attn.w_qkv", f"{theirs}.attn.qkv.weight", "qkv", heads),
             ("params", f"{ours}.attn.b_qkv", f"{theirs}.attn.qkv.bias", "qkv_bias", heads),
             ("params", f"{ours}.attn.w_out", f"{theirs}.attn.proj.weight", "conv1x1", 0),
             ("params", f"{ours}.attn.b_out", f"{theirs}.attn.proj.bias", "copy", 0),
             ("params", f"{ours}.attn.rel_bias",
              f"{theirs}.attn.rel_pos.relative_position_bias_table", "rel_bias", heads)]
    _norm(rows, f"{ours}.norm2", f"{theirs}.norm2", batch_norm=False)
    _dense(rows, f"{ours}.ffn.fc1", f"{theirs}.mlp.fc1")
    _dense(rows, f"{ours}.ffn.fc2", f"{theirs}.mlp.fc2")


def check_expressible(config):
    """Raise ``ValueError`` if timm's ``MaxxVit`` cannot hold a network of ``config``."""
    problems = []
    if config.layout == "VIT_REL":
        problems.append("layout VIT_REL (timm's CoAtNets have a convolutional stem)")
    if config.depths[0] != 2 or config.strides[0] != 2:
        problems.append(f"a stem of {config.depths[0]} convolutions with stride "
                        f"{config.strides[0]} (timm's Stem: two, the first with stride 2)")
    if config.stem_bias:
        problems.append("stem_bias=True (timm's coatnet_N_224 stem has no bias)")
    if any(s != 2 for s in config.strides[1:]):
        problems.append(f"strides {config.strides} (timm's stages all stride 2)")
    if config.pool != "avg" or config.stride_at != "depthwise":
        problems.append(f"pool={config.pool!r}, stride_at={config.stride_at!r} (timm: 'avg', "
                        "'depthwise')")
    if config.variant != "pre" or config.gelu != "none":
        problems.append(f"variant={config.variant!r}, gelu={config.gelu!r} (timm: 'pre', "
                        "'none')")
    if not config.head_hidden:
        problems.append("head_hidden=0 (timm's paper-style head has a pre-logits layer)")
    if problems:
        raise ValueError(f"config {config.name!r} cannot be expressed as timm's CoAtNet: "
                         + "; ".join(problems) + " (start from minicoat.interop.timm.config)")


def table(config):
    """The rows ``(section, minicoat key, timm key, kind, heads)`` of ``config``'s network."""
    check_expressible(config)
    layers = plan(config)
    rows = []
    stem = stage_blocks(layers, 0)
    for block in stem:  # minicoat conv0, conv1 -> timm conv1, conv2
        i = block.index
        _dense(rows, f"stem.conv{i}", f"stem.conv{i + 1}", kind="conv",
               bias=block is stem[-1] and config.stem_bias)
        if block is not stem[-1]:
            _norm(rows, f"stem.norm{i}", f"stem.norm{i + 1}")
    for block in layers[len(stem):]:
        ours, theirs = block.name, f"stages.{block.stage - 1}.blocks.{block.index}"
        if block.stride == 1 and block.c_in != block.c_out:
            raise ValueError(f"{block.name} changes width without downsampling; timm's blocks "
                             "only change width in a stage's first (stride 2) block")
        if block.kind == "C":
            _mbconv(rows, ours, theirs, block)
        else:
            _transformer(rows, ours, theirs, block)
        if block.proj:
            _dense(rows, f"{ours}.proj", f"{theirs}.shortcut.expand")
    _norm(rows, "head.norm", "head.norm", batch_norm=False)
    _dense(rows, "head.pre_logits", "head.pre_logits.fc", kind="linear")
    _dense(rows, "head", "head.fc", kind="linear")
    return rows


def counters(config):
    """timm's ``num_batches_tracked`` entries (one per BatchNorm), which minicoat does not keep."""
    return sorted({theirs.rsplit(".", 1)[0] + ".num_batches_tracked"
                   for section, _, theirs, _, _ in table(config) if section == "state"})
