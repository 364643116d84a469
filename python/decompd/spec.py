"""The layer spec of a live nn.Module, and where each of its layers lives.

The engine never sees a Python object: it gets the model's layer structure as
the JSON layer spec of DESIGN.md ("Formats") and the weights as tensors. This
file owns reading that structure off a live module:

- ``walk(model)``: every submodule under every name it is reachable by, with
  the (parent, attribute) slot holding it, so a module shared by two parents
  can be replaced in both;
- ``conv_fields(conv)``, ``linear_fields(linear)``: an nn.Conv2d's or an
  nn.Linear's fields as the spec spells them;
- ``layer_spec(model)``: the spec — every decomposable nn.Conv2d and
  nn.Linear under its first name, and every other module holding parameters
  with its type, so the info file records why it was left alone;
- ``input_sizes(model, x)``: each conv's input size from one forward pass,
  for the spec's optional ``input_size`` (exact MACs for the budget).

Only modules whose class is exactly ``torch.nn.Conv2d`` or
``torch.nn.Linear`` are decomposable: a subclass may override ``forward``
(weight standardization, quantization stubs, or
``NonDynamicallyQuantizableLinear``, whose weight nn.MultiheadAttention reads
directly), and a layer whose ``weight`` is not a plain parameter (old-style
``weight_norm``) would lose its reparametrization. Whether the policy
decomposes Linear layers is the policy's ``types`` (default Conv2d only).
"""

import json
from collections import OrderedDict

import torch
import torch.nn as nn

__all__ = ["ModuleRef", "walk", "is_plain_conv", "is_plain_linear",
           "is_decomposable", "conv_fields", "linear_fields", "layer_fields",
           "root_name", "type_name", "input_sizes", "layer_spec",
           "layer_spec_json"]


class ModuleRef:
    """One module object of a model: its names (first one canonical, in
    ``named_modules()`` order) and the (parent, attribute) slots holding it.
    The root module has the name "" and no slot."""

    __slots__ = ("module", "names", "slots")

    def __init__(self, module):
        self.module = module
        self.names = []
        self.slots = []

    @property
    def name(self):
        return self.names[0]

    def __repr__(self):
        return f"ModuleRef({type(self.module).__name__}, names={self.names})"


def walk(model):
    """An OrderedDict id(module) -> ModuleRef over every module reachable from
    `model` (itself included, named ""), in pre-order; a module reachable
    under several names is listed once with all its names and slots."""
    refs = OrderedDict()
    root = ModuleRef(model)
    root.names.append("")
    refs[id(model)] = root
    path = {id(model)}  # guards against cycles in malformed module graphs

    def visit(module, prefix):
        for attr, child in module._modules.items():
            if child is None:
                continue
            name = prefix + attr
            ref = refs.get(id(child))
            if ref is None:
                ref = refs[id(child)] = ModuleRef(child)
            ref.names.append(name)
            ref.slots.append((module, attr))
            if id(child) in path:
                continue
            path.add(id(child))
            visit(child, name + ".")
            path.discard(id(child))

    visit(model, "")
    return refs


def is_plain_conv(module):
    """Whether `module` is a decomposable nn.Conv2d (see the file comment)."""
    return (type(module) is nn.Conv2d
            and isinstance(module._parameters.get("weight"), nn.Parameter))


def is_plain_linear(module):
    """Whether `module` is a decomposable nn.Linear (see the file comment)."""
    return (type(module) is nn.Linear
            and isinstance(module._parameters.get("weight"), nn.Parameter))


def is_decomposable(module):
    """A plain nn.Conv2d or a plain nn.Linear."""
    return is_plain_conv(module) or is_plain_linear(module)


_PLAIN = {nn.Conv2d: "Conv2d", nn.Linear: "Linear"}


def type_name(module):
    """The spec's `type` for a module: its class name, qualified when it
    would otherwise read "Conv2d" or "Linear" without being a plain torch
    Conv2d or Linear."""
    cls = type(module)
    if is_plain_conv(module):
        return "Conv2d"
    if is_plain_linear(module):
        return "Linear"
    name = cls.__name__
    if name in _PLAIN.values():
        if _PLAIN.get(cls) == name:
            return f"{name}(weight reparametrized)"
        return f"{cls.__module__}.{cls.__qualname__}"
    return name


# The engine wants non-empty layer names: a bare Conv2d or Linear (the root,
# named "" in `changes`) is called this in the spec, the info file and a
# calibration file. It has no children, so the name cannot collide.
ROOT_NAMES = {"Conv2d": "conv", "Linear": "linear"}


def root_name(module):
    """The engine's name for `module` when it is the model itself."""
    return ROOT_NAMES.get(type_name(module), "conv")


def _pair(v):
    if isinstance(v, (tuple, list)):
        return [int(x) for x in v]
    return [int(v), int(v)]


def conv_fields(conv):
    """The spec fields of an nn.Conv2d (without name and type)."""
    padding = conv.padding
    if not isinstance(padding, str):
        padding = _pair(padding)
    return {
        "in_channels": int(conv.in_channels),
        "out_channels": int(conv.out_channels),
        "kernel_size": _pair(conv.kernel_size),
        "stride": _pair(conv.stride),
        "padding": padding,
        "dilation": _pair(conv.dilation),
        "groups": int(conv.groups),
        "bias": conv.bias is not None,
        "padding_mode": conv.padding_mode,
    }


def linear_fields(linear):
    """The spec fields of an nn.Linear (without name and type)."""
    return {
        "in_features": int(linear.in_features),
        "out_features": int(linear.out_features),
        "bias": linear.bias is not None,
    }


def layer_fields(module):
    """conv_fields or linear_fields, by the module's kind."""
    return linear_fields(module) if is_plain_linear(module) \
        else conv_fields(module)


def _has_own_parameters(module):
    return any(p is not None for p in module._parameters.values())


def input_sizes(model, example_input):
    """{id(conv): [H, W]} of the input each plain Conv2d of `model` sees in
    one forward pass on `example_input` (a tensor, or a tuple of positional
    arguments), run in eval mode without gradients; every module's
    train/eval flag is restored afterwards. A conv called several times keeps
    its first size; a conv that does not run is absent."""
    sizes = {}

    def hook(module, inputs):
        x = inputs[0] if inputs else None
        if id(module) not in sizes and isinstance(x, torch.Tensor) \
                and x.dim() >= 2:
            sizes[id(module)] = [int(x.shape[-2]), int(x.shape[-1])]

    args = example_input if isinstance(example_input, tuple) \
        else (example_input,)
    modes = [(m, m.training) for m in model.modules()]
    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if is_plain_conv(m)]
    try:
        model.eval()
        with torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    return sizes


def layer_spec(refs, engine_name=None, sizes=None):
    """The layer spec (a dict) of the modules in `refs` (from walk()).

    engine_name maps a module's canonical name to the name given to the
    engine (identity by default); sizes (from input_sizes()) adds each
    conv's input_size, so the engine counts whole-layer MACs."""
    layers = []
    for ref in refs.values():
        m = ref.module
        if not _has_own_parameters(m):
            continue
        name = engine_name(ref.name) if engine_name else ref.name
        if is_plain_conv(m):
            layer = {"name": name, "type": "Conv2d"}
            layer.update(conv_fields(m))
            if sizes and id(m) in sizes:
                layer["input_size"] = sizes[id(m)]
        elif is_plain_linear(m):
            layer = {"name": name, "type": "Linear"}
            layer.update(linear_fields(m))
        else:
            layer = {"name": name, "type": type_name(m)}
        layers.append(layer)
    return {"layers": layers}


def layer_spec_json(refs, engine_name=None, sizes=None):
    return json.dumps(layer_spec(refs, engine_name, sizes),
                      separators=(",", ":"))
