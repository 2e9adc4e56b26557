"""K models of one architecture run as one fused module: the model a trial pack trains (search/train/pack.py).

The members' models stay the real, separate modules their trainers built (own initialisation, own optimizer, own
checkpoint). :func:`fuse` traces one of them with torch.fx and replaces each layer of the graph with a fused layer
over the K members' layers, in the layout HFTA uses (Wang et al., MLSys 2021, "Horizontally Fused Training Array"):

- an activation holds the members side by side along dimension 1: images as (N, K*C, H, W), features as (N, K*F);
- a convolution is one grouped convolution (groups multiplied by K) over the members' weights concatenated;
- a BatchNorm is one batch norm over K*C channels whose running statistics are one tensor; each member's buffers
  are views into it, so the in-place updates of the fused layer land in every member's own buffers;
- a linear layer is one batched matmul over (K, N, F);
- dropout draws each member's mask from that member's own generator, exactly as its lone run draws it (on the CPU);
- activations, pooling, flatten from dimension 1 and residual adds act on each channel (or each position) alone and
  run on the fused layout as they are.

The fused weights are concatenated from the members' parameters at every forward, so autograd routes each gradient
back to its member's own leaf parameters and each member's optimizer steps its own model. A layer or an operation
outside this list (a concatenation, a reshape across channels, 3-d convolutions...) does not fuse: :func:`unfusable`
names it, and such an architecture trains unpacked.

:class:`Sliced` takes the same inputs and gives the same outputs with the members' own models side by side: what a
pack runs on the CPU, where fusing only slows it down (its docstring says why).
"""
from __future__ import annotations

import operator
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

from models.layers import Dropout as FastDropout
from models.layers import PoolTo

# Layers that treat each channel (or feature) alone and have no parameters: they run on the fused layout as they are.
_PER_CHANNEL = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Identity, nn.MaxPool2d,
                nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, PoolTo)
_PER_CHANNEL_FUNCTIONS = {operator.add, operator.iadd, operator.mul, operator.imul, torch.add, torch.relu, F.relu,
                          F.relu_, F.leaky_relu, F.gelu, F.adaptive_avg_pool2d, F.max_pool2d, F.avg_pool2d}
_PER_CHANNEL_METHODS = {"relu", "relu_", "add", "add_", "mul", "mul_", "sigmoid", "tanh"}


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with the layers whose forward branches on a shape (PoolTo, our Dropout) kept whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (FastDropout, PoolTo)) or super().is_leaf_module(m, qualname)


def unfusable(model: nn.Module) -> str | None:
    """The first layer or operation of ``model`` that does not fuse, in a few words; None when all of it fuses."""
    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # data-dependent control flow: fx says where, in one line
        return f"torch.fx cannot trace it ({str(err).splitlines()[0][:120]})"
    for node in graph.nodes:
        what = _unfusable_node(model, node)
        if what is not None:
            return what
    return None


def _unfusable_node(model: nn.Module, node: fx.Node) -> str | None:
    if node.op == "call_module":
        layer = model.get_submodule(node.target)
        name = f"layer '{node.target}' ({type(layer).__name__})"
        if type(layer) is nn.Conv2d:
            return None if layer.padding_mode == "zeros" else f"{name} pads with '{layer.padding_mode}'"
        if type(layer) in (nn.BatchNorm1d, nn.BatchNorm2d):
            return None if layer.momentum is not None else f"{name} has a cumulative average (momentum None)"
        if type(layer) is nn.Flatten:
            return None if (layer.start_dim, layer.end_dim) == (1, -1) else f"{name} does not flatten from dim 1"
        if type(layer) in (nn.Linear, nn.Dropout, FastDropout) or type(layer) in _PER_CHANNEL:
            return None
        return name
    if node.op == "call_function":
        if node.target in _PER_CHANNEL_FUNCTIONS:
            return None
        if node.target is torch.flatten and node.args[1:] == (1,) and not node.kwargs:
            return None
        return f"operation {getattr(node.target, '__name__', node.target)}"
    if node.op == "call_method":
        return None if node.target in _PER_CHANNEL_METHODS else f"method .{node.target}()"
    if node.op == "get_attr":
        return f"direct use of the tensor '{node.target}'"
    return None  # placeholder, output


def fuse(models: Sequence[nn.Module], generators: Sequence[torch.Generator]) -> fx.GraphModule:
    """One module that runs ``models`` (same architecture; :func:`unfusable` said None) as one on the fused layout.

    ``generators``: each member's dropout generator. The members' BatchNorm buffers become views into the fused
    layer's tensors; :func:`unfuse` gives them back storage of their own (call it before building another fusion of
    the same models).
    """
    graph = _Tracer().trace(models[0])
    root = nn.Module()
    for node in graph.nodes:
        if node.op == "call_module":
            layers = [m.get_submodule(node.target) for m in models]
            name = node.target.replace(".", "_")
            root.add_module(name, _fused_layer(layers, generators))
            node.target = name
    return fx.GraphModule(root, graph, class_name="Pack")


def unfuse(models: Sequence[nn.Module]) -> None:
    """Give each BatchNorm buffer that is a view into a fused tensor its own storage again (a copy of its values)."""
    for model in models:
        for layer in model.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                for name in _STATS:
                    buf = getattr(layer, name)
                    if buf is not None and buf.untyped_storage().nbytes() > buf.numel() * buf.element_size():
                        setattr(layer, name, buf.clone())


def _fused_layer(layers: list[nn.Module], generators: Sequence[torch.Generator]) -> nn.Module:
    kind = type(layers[0])
    if kind is nn.Conv2d:
        return _Conv(layers)
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d):
        return _BatchNorm(layers)
    if kind is nn.Linear:
        return _Linear(layers)
    if kind in (nn.Dropout, FastDropout):
        return _Dropout(layers, generators)
    return layers[0]  # per channel, no parameters: the same layer on the fused layout


class _Conv(nn.Module):
    def __init__(self, convs: list[nn.Conv2d]) -> None:
        super().__init__()
        self.members = nn.ModuleList(convs)
        c = convs[0]
        self.stride, self.padding, self.dilation, self.groups = c.stride, c.padding, c.dilation, c.groups * len(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch.cat([c.weight for c in self.members])
        bias = None if self.members[0].bias is None else torch.cat([c.bias for c in self.members])
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


_STATS = ("running_mean", "running_var", "num_batches_tracked")


class _BatchNorm(nn.Module):
    """One batch norm over the members' channels; the running statistics are fused tensors, the members' views."""

    def __init__(self, norms: list[nn.modules.batchnorm._BatchNorm]) -> None:
        super().__init__()
        self.members = nn.ModuleList(norms)
        first = norms[0]
        self.momentum, self.eps, self.track = first.momentum, first.eps, first.track_running_stats
        self.stats: dict[str, torch.Tensor] = {}
        if self.track:
            for name in _STATS:
                fused = torch.cat([getattr(m, name).reshape(-1) for m in norms])
                width = fused.numel() // len(norms)
                for k, m in enumerate(norms):  # assigning a registered buffer's name replaces the buffer
                    setattr(m, name, fused[k * width:(k + 1) * width].view_as(getattr(m, name)))
                self.stats[name] = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        training = self.training or not self.track
        if self.training and self.track:
            self.stats["num_batches_tracked"].add_(1)  # what nn.BatchNorm counts, one add for all members
        affine = self.members[0].weight is not None
        weight = torch.cat([m.weight for m in self.members]) if affine else None
        bias = torch.cat([m.bias for m in self.members]) if affine else None
        return F.batch_norm(x, self.stats.get("running_mean"), self.stats.get("running_var"), weight, bias,
                            training, self.momentum, self.eps)


class _Linear(nn.Module):
    """The members' linear layers as one batched matmul: (N, K*F) -> (K, N, F) @ (K, F, O) -> (N, K*O)."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        super().__init__()
        self.members = nn.ModuleList(linears)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            return self.batched(x)
        # On the CPU one matmul per member is as fast, and its sums are those of the lone run bit for bit (a batched
        # matmul's are not): the CPU pack trains exactly as its members alone.
        return torch.cat([m(part) for m, part in zip(self.members, x.chunk(len(self.members), dim=1))], dim=1)

    def batched(self, x: torch.Tensor) -> torch.Tensor:
        k, n = len(self.members), x.shape[0]
        x = x.reshape(n, k, -1).transpose(0, 1)
        weight = torch.stack([m.weight for m in self.members]).transpose(1, 2)
        if self.members[0].bias is None:
            out = torch.bmm(x, weight)
        else:
            out = torch.baddbmm(torch.stack([m.bias for m in self.members]).unsqueeze(1), x, weight)
        return out.transpose(0, 1).reshape(n, -1)


class _Dropout(nn.Module):
    """Each member's dropout with its own rate.

    On the CPU each member's mask is drawn exactly as its lone run draws it: models.layers.Dropout compares
    ``rand_like`` with p, nn.Dropout (F.dropout) fills ``bernoulli_(1 - p)`` and divides, both in the memory layout
    of the member's own activation, from the member's generator (whose state is what torch's global one would hold
    in the lone run). On CUDA, where a lone run's masks come from torch's fused dropout kernel (the same
    distribution, other numbers: no pack could repeat them), all members' masks are one uniform draw from the first
    member's generator compared with each channel's rate: three kernels, whatever K.
    """

    def __init__(self, drops: list[nn.Dropout], generators: Sequence[torch.Generator]) -> None:
        super().__init__()
        self.rates = [float(m.p) for m in drops]
        self.bernoulli = [type(m) is nn.Dropout for m in drops]
        self.generators = list(generators)
        self._per_channel: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not any(self.rates):
            return x
        if x.is_cuda:
            return self.shared(x)
        k = len(self.rates)
        shape = (x.shape[0], x.shape[1] // k, *x.shape[2:])
        layout = (torch.channels_last if x.dim() == 4 and not x.is_contiguous()
                  and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
        masks = []
        for p, bernoulli, gen in zip(self.rates, self.bernoulli, self.generators):
            if p == 0:  # a lone run draws nothing here
                masks.append(torch.ones(shape, dtype=x.dtype, device=x.device))
                continue
            noise = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout)
            if bernoulli:
                masks.append(noise.bernoulli_(1 - p, generator=gen).div_(1 - p))
            else:
                keep = noise.uniform_(generator=gen) >= p
                masks.append(keep.to(x.dtype).mul_(1.0 / (1.0 - p)))
        return x * torch.cat(masks, dim=1)

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """All members' masks from one draw: keep where u >= the channel's member's p, scaled by 1 / (1 - p)."""
        key = (x.shape[1], x.device)
        if key not in self._per_channel:
            width = x.shape[1] // len(self.rates)
            rates = torch.tensor(self.rates, device=x.device).repeat_interleave(width)
            view = (1, -1) + (1,) * (x.dim() - 2)
            self._per_channel[key] = (rates.view(view), (1 / (1 - rates)).view(view))
        rates, scales = self._per_channel[key]
        noise = torch.empty_like(x, dtype=torch.float32).uniform_(generator=self.generators[0])
        return x * ((noise >= rates) * scales).to(x.dtype)


class Sliced(nn.Module):
    """The members' own models side by side, each on its slice of the fused layout: the pack of the CPU.

    On a CPU a fused layer gains nothing (one core runs one kernel at a time, and launching one costs nothing) and
    loses to the K times larger working set of its memory-bound layers (batch norm, ReLU, pooling: bench/
    pack_speed.py measured a fused pack of 8 at 0.4-0.7x its members trained one after another). So a CPU pack
    runs each member's model on its own channels in turn, its dropout drawing from its own generator (swapped in as
    torch's global one for its pass): the same inputs, outputs and layout as the fused module, each member's numbers
    those of its lone run, and the speed of the lone runs.
    """

    def __init__(self, models: Sequence[nn.Module], generators: Sequence[torch.Generator]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)
        self.generators = list(generators)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for model, gen, part in zip(self.members, self.generators, x.chunk(len(self.members), dim=1)):
            part = part.contiguous(memory_format=torch.channels_last)
            if self.training:
                set_global_rng(part.device, gen.get_state())
                outs.append(model(part))
                gen.set_state(global_rng(part.device))
            else:
                outs.append(model(part))
        return torch.cat(outs, dim=1)


def global_rng(device: torch.device) -> torch.Tensor:
    """The state of torch's global generator on ``device`` (the one a model's dropout draws from)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def set_global_rng(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def fused_size(fused: nn.Module) -> int:
    """How many members ``fused`` (a :func:`fuse` module or a :class:`Sliced` one) runs."""
    for layer in fused.modules():
        if isinstance(layer, (Sliced, _Conv, _Linear, _BatchNorm)):
            return len(layer.members)
    raise ValueError("not a fused module")


__all__: list[Any] = ["fuse", "unfuse", "unfusable", "fused_size", "Sliced", "global_rng", "set_global_rng"]
