"""Fast CPU inference for EfficientNet backbones: batch-norm folding, channels-last memory layout, a
frozen TorchScript module, and an optional ONNX Runtime session.

Every backend maps a normalised image batch (B, 3, H, W) to a feature map (B, C, h, w) at stride 32:
``layer="head"`` the last one, ``EfficientNet.extract_features`` (after the 1x1 head convolution,
1280 channels for B0 / Lite0), or ``layer="blocks"`` the output of the last MBConv block, before the
head (320 channels for B0 / Lite0; see :data:`LAYERS`). Pooling is shared by all backends:

=============== =========================================================================================
``eager``       efficientnet-pytorch's own modules (reference; swish as ``nn.SiLU`` for B0..B7)
``folded``      :class:`FoldedEfficientNet`: every conv + BatchNorm2d pair replaced by one conv
``channels_last`` folded, weights and input in NHWC layout (oneDNN's preferred layout on CPU)
``torchscript`` folded + channels-last, ``torch.jit.script`` + ``torch.jit.freeze`` +
                ``torch.jit.optimize_for_inference``
``onnxruntime`` folded model exported with ``torch.onnx.export`` (dynamic batch, height, width) and run
                by ONNX Runtime on CPU (only where ``onnxruntime`` is installed)
=============== =========================================================================================

Batch-norm folding, for a convolution ``z = W * x + b`` followed by BN in eval mode
``y = gamma * (z - mu) / sqrt(var + eps) + beta``::

    s  = gamma / sqrt(var + eps)        (per output channel)
    W' = W * s[:, None, None, None]
    b' = beta + (b - mu) * s

TensorFlow "same" padding (what efficientnet-pytorch's ``Conv2dDynamicSamePadding`` computes at run
time) is kept exact: a stride-1 convolution with an odd kernel pads ``(k - 1) / 2`` on each side (a
fixed ``padding`` of ``nn.Conv2d``); a strided one pads ``max((ceil(i / s) - 1) * s + k - i, 0)`` in
total, the smaller half before, computed from the input size in the forward pass (scriptable, so any
input size works with every backend).
"""
import os
import tempfile
import warnings
from typing import Optional, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["BACKENDS", "GPU_BACKENDS", "LAYERS", "layer_channels", "blocks_features", "fold_conv_bn",
           "SamePadConv2d", "FoldedMBConv", "FoldedEfficientNet", "fold_efficientnet", "FastBackbone",
           "make_backbone", "onnxruntime_available", "ort_session"]

BACKENDS = ("eager", "folded", "channels_last", "torchscript", "onnxruntime")
#: backends that also run on a GPU (torch modules); TorchScript and ONNX Runtime here are CPU paths
GPU_BACKENDS = ("eager", "folded", "channels_last")
CPU = torch.device("cpu")
#: feature maps a backbone can end at: after the head convolution, or after the last MBConv block
LAYERS = ("head", "blocks")


def layer_channels(net: nn.Module, layer: str = "head") -> int:
    """Channels of ``net``'s feature map at ``layer`` (one of :data:`LAYERS`)."""
    if layer not in LAYERS:
        raise ValueError(f"unknown feature layer {layer!r}; choose one of {LAYERS}")
    if layer == "head":
        return int(net._conv_head.out_channels)
    return int(net._blocks[-1]._block_args.output_filters)


def blocks_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """efficientnet-pytorch's ``extract_features`` without the head: stem, then every MBConv block
    (with the same drop-connect schedule, which acts only in training)."""
    x = net._swish(net._bn0(net._conv_stem(x)))
    rate = net._global_params.drop_connect_rate
    for idx, block in enumerate(net._blocks):
        x = block(x, drop_connect_rate=rate * float(idx) / len(net._blocks) if rate else rate)
    return x


def onnxruntime_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def fold_conv_bn(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d]):
    """(weight, bias) of the single convolution equal to ``bn(conv(x))`` in eval mode (torch's
    ``fuse_conv_bn_weights``; a batch norm without affine parameters has gamma 1 and beta 0)."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    if bn is None:
        bias = (conv.bias.detach().clone() if conv.bias is not None
                else torch.zeros(conv.weight.shape[0], dtype=conv.weight.dtype))
        return conv.weight.detach().clone(), bias
    weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                        bn.weight, bn.bias)
    return weight.detach(), bias.detach()


class SamePadConv2d(nn.Module):
    """A convolution (bias included) with TensorFlow "same" padding for any input size."""

    strided: bool
    stride: int
    kernel: int
    dilation: int

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, stride: int, groups: int, dilation: int = 1):
        super().__init__()
        out_ch, in_per_group, kh, kw = weight.shape
        if kh != kw:
            raise ValueError(f"square kernels only, got {kh}x{kw}")
        self.stride, self.kernel, self.dilation = int(stride), int(kh), int(dilation)
        effective = (kh - 1) * dilation + 1
        # stride 1, odd effective kernel: the same total padding (k - 1) split evenly, a fixed padding
        self.strided = self.stride != 1 or effective % 2 == 0
        padding = 0 if self.strided else (effective - 1) // 2
        self.conv = nn.Conv2d(in_per_group * groups, out_ch, kh, stride=self.stride, padding=padding,
                              dilation=self.dilation, groups=groups, bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            self.conv.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.strided:
            ih = x.shape[2]
            iw = x.shape[3]
            s = self.stride
            k = (self.kernel - 1) * self.dilation + 1
            pad_h = max(((ih + s - 1) // s - 1) * s + k - ih, 0)
            pad_w = max(((iw + s - 1) // s - 1) * s + k - iw, 0)
            if pad_h > 0 or pad_w > 0:
                x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return self.conv(x)


def _folded(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d]) -> SamePadConv2d:
    weight, bias = fold_conv_bn(conv, bn)
    stride = conv.stride[0] if isinstance(conv.stride, (tuple, list)) else int(conv.stride)
    dilation = conv.dilation[0] if isinstance(conv.dilation, (tuple, list)) else int(conv.dilation)
    return SamePadConv2d(weight, bias, stride=stride, groups=conv.groups, dilation=dilation)


def _activation(is_lite: bool) -> nn.Module:
    return nn.ReLU6() if is_lite else nn.SiLU()


class FoldedMBConv(nn.Module):
    """An efficientnet-pytorch ``MBConvBlock`` in eval mode with its batch norms folded: expand (1x1) ->
    act -> depthwise -> act -> [squeeze-excitation] -> project (1x1) [+ input]."""

    has_expand: bool
    has_se: bool
    residual: bool

    def __init__(self, block: nn.Module, is_lite: bool):
        super().__init__()
        args = block._block_args
        self.has_expand = args.expand_ratio != 1
        self.expand = _folded(block._expand_conv, block._bn0) if self.has_expand else nn.Identity()
        self.depthwise = _folded(block._depthwise_conv, block._bn1)
        self.has_se = bool(block.has_se)
        if self.has_se:
            self.se_reduce = _folded(block._se_reduce, None)
            self.se_expand = _folded(block._se_expand, None)
        else:
            self.se_reduce = nn.Identity()
            self.se_expand = nn.Identity()
        self.project = _folded(block._project_conv, block._bn2)
        # the same test as MBConvBlock.forward (stride is [1] for a stage's first block, 1 after)
        self.residual = bool(block.id_skip and args.stride == 1 and args.input_filters == args.output_filters)
        self.act = _activation(is_lite)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.has_expand:
            x = self.act(self.expand(x))
        x = self.act(self.depthwise(x))
        if self.has_se:
            squeezed = F.adaptive_avg_pool2d(x, 1)
            squeezed = self.se_expand(self.act(self.se_reduce(squeezed)))
            x = torch.sigmoid(squeezed) * x
        x = self.project(x)
        if self.residual:
            x = x + inputs
        return x


class FoldedEfficientNet(nn.Module):
    """``EfficientNet.extract_features`` in eval mode with every BatchNorm folded into its convolution
    (``layer="blocks"``: without the head). Scriptable; equal to the eager network to float rounding."""

    has_head: bool

    def __init__(self, net: nn.Module, is_lite: bool, layer: str = "head"):
        super().__init__()
        self.out_channels = layer_channels(net, layer)
        self.stem = _folded(net._conv_stem, net._bn0)
        self.blocks = nn.Sequential(*[FoldedMBConv(b, is_lite) for b in net._blocks])
        self.has_head = layer == "head"
        self.head = _folded(net._conv_head, net._bn1) if self.has_head else nn.Identity()
        self.act = _activation(is_lite)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        x = self.blocks(x)
        if self.has_head:
            x = self.act(self.head(x))
        return x


def fold_efficientnet(net: nn.Module, is_lite: bool, layer: str = "head") -> FoldedEfficientNet:
    return FoldedEfficientNet(net, is_lite, layer).eval()


class _EagerFeatures(nn.Module):
    def __init__(self, net: nn.Module, layer: str = "head"):
        super().__init__()
        self.net = net
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x) if self.layer == "head" else blocks_features(self.net, x)


class _FeaturesAndDescriptor(nn.Module):
    """backbone -> (feature map, L2(pool(feature map))): exported as one ONNX graph, so the ONNX
    Runtime path never runs a torch op (torch's OpenMP threads, spinning after a pooling op, halved
    ONNX Runtime's speed on 2 cores in benchmarks/deep_speed.py)."""

    def __init__(self, backbone: nn.Module, pool: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.pool = pool

    def forward(self, x: torch.Tensor):
        fmap = self.backbone(x)
        desc = self.pool(fmap)
        return fmap, desc / desc.norm(p=2, dim=1, keepdim=True).clamp_min(1e-12)


class FastBackbone:
    """A callable ``fmap = backbone(x)`` for (B, 3, H, W) float input in eval / inference mode, built by
    :func:`make_backbone`; :meth:`describe` gives the L2-normalised pooled descriptor.
    ``channels_last`` says which layout it wants its input in (it converts otherwise)."""

    def __init__(self, backend: str, module=None, session=None, channels_last: bool = False,
                 out_channels: int = 0, pool: Optional[nn.Module] = None, device: torch.device = CPU,
                 autocast: Optional[torch.dtype] = None):
        self.backend = backend
        self.autocast = autocast  # e.g. torch.bfloat16: the module runs under torch.autocast
        self.module = module
        self.session = session
        self.channels_last = channels_last
        self.out_channels = out_channels
        self.pool = pool
        self.device = torch.device(device)

    def _run_module(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map on :attr:`device` (the input is moved there, non-blocking from pinned memory)."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and not x.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        elif not self.channels_last and not x.is_contiguous():
            x = x.contiguous()
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast or torch.bfloat16,
                                                    enabled=self.autocast is not None):
            return self.module(x)

    def _run_session(self, x: torch.Tensor, output: str):
        feed = x.detach().numpy()
        if feed.dtype != np.float32 or not feed.flags.c_contiguous:
            feed = np.ascontiguousarray(feed, dtype=np.float32)
        # only the output asked for is copied out (a descriptor needs no (B, C, h, w) feature map)
        return self.session.run([output], {"image": feed})[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map (B, C, h, w), on the CPU."""
        if self.session is not None:
            return torch.from_numpy(self._run_session(x, "fmap"))
        return self._run_module(x).float().cpu()

    def describe(self, x: torch.Tensor) -> np.ndarray:
        """(B, C) float32 numpy: ``L2(pool(fmap))`` with the pooling given to :func:`make_backbone`
        (pooled on :attr:`device`: only the descriptors come back)."""
        if self.pool is None:
            raise ValueError("this backbone was built without a pooling module (make_backbone(..., pool=))")
        if self.session is not None:
            return self._run_session(x, "desc")
        fmap = self._run_module(x).float()
        with torch.inference_mode():
            desc = self.pool(fmap)
            return (desc / desc.norm(p=2, dim=1, keepdim=True).clamp_min(1e-12)).cpu().numpy()

    def __repr__(self) -> str:
        extra = f", autocast={self.autocast}" if self.autocast is not None else ""
        return (f"FastBackbone(backend={self.backend!r}, channels_last={self.channels_last}, "
                f"device={str(self.device)!r}{extra})")


def _onnx_session(module: nn.Module, example: torch.Tensor, threads: Optional[int]):
    # export to a temporary file: the model is ~14 MB, ONNX Runtime reads it back from bytes
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "backbone.onnx")
        with warnings.catch_warnings():
            # the tracer warns that the "same" padding is computed from input sizes; the exporter keeps
            # those as dynamic shape ops (checked against eager at odd and even sizes in the tests)
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), path, input_names=["image"], output_names=["fmap", "desc"],
                              dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                            "fmap": {0: "batch", 2: "fh", 3: "fw"}, "desc": {0: "batch"}},
                              opset_version=17, dynamo=False)
        with open(path, "rb") as fh:
            model_bytes = fh.read()
    return ort_session(model_bytes, threads)


def ort_session(model_bytes: bytes, threads: Optional[int] = None):
    """An ONNX Runtime CPU session of the serialised model, all graph optimisations, no spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: a quantized graph logs every constant it drops
    # no spin-waiting between ops: on a busy machine the spinning threads take the CPU from the ones
    # working (Oxford E1, lite0-blocks-gem-ms-512, 40 images at load 5-7 on 2 cores: 643 / 702 ms per
    # image spinning, 278 / 517 without; a cold `make bench` under load spent 9x the quiet time there)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def make_backbone(net: nn.Module, is_lite: bool, backend: str = "torchscript",
                  example_size: int = 224, threads: Optional[int] = None,
                  pool: Optional[nn.Module] = None, layer: str = "head",
                  device: Union[str, torch.device] = "cpu", autocast: Optional[torch.dtype] = None) -> FastBackbone:
    """A :class:`FastBackbone` for the eval-mode EfficientNet ``net`` (not modified; copies are made).

    ``backend``: one of :data:`BACKENDS`. 'onnxruntime' raises ``ImportError`` when onnx/onnxruntime
    are not installed. ``pool`` (a pooling module, e.g. :class:`retrieval.features.pooling.GeM`) enables
    :meth:`FastBackbone.describe` (in the ONNX graph for 'onnxruntime'; the exported exponent of a
    learned GeM is its value at this call). ``layer``: the feature map returned (:data:`LAYERS`).
    ``device``: where the network runs ('cpu', 'cuda', 'cuda:1', ...); on a GPU only the torch
    module backends (:data:`GPU_BACKENDS`) apply, inputs are moved there and feature maps or
    descriptors come back to the CPU. ``autocast`` (e.g. ``torch.bfloat16``): the torch module backends
    run under ``torch.autocast`` (pooling in float32)."""
    import copy

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    device = torch.device(device)
    if autocast is not None and backend not in GPU_BACKENDS:
        raise ValueError(f"backend {backend!r} runs in float32 only; autocast needs one of {GPU_BACKENDS}")
    if device.type != "cpu":
        if backend not in GPU_BACKENDS:
            raise ValueError(f"backend {backend!r} runs on the CPU only; on {device} use one of {GPU_BACKENDS}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for but CUDA is not available in this torch build")
    pool = None if pool is None else copy.deepcopy(pool).eval().to(device)
    out_channels = layer_channels(net, layer)
    if backend == "eager":
        eager = copy.deepcopy(net).eval()
        if not is_lite and hasattr(eager, "set_swish"):
            eager.set_swish(memory_efficient=False)  # plain SiLU: same values, no custom autograd
        return FastBackbone("eager", _EagerFeatures(eager, layer).eval().to(device), out_channels=out_channels,
                            pool=pool, device=device, autocast=autocast)
    folded = fold_efficientnet(net, is_lite, layer)
    if backend == "folded":
        return FastBackbone("folded", folded.to(device), out_channels=out_channels, pool=pool, device=device,
                            autocast=autocast)
    if backend == "channels_last":
        return FastBackbone("channels_last", folded.to(device, memory_format=torch.channels_last),
                            channels_last=True, out_channels=out_channels, pool=pool, device=device,
                            autocast=autocast)
    if backend == "torchscript":
        folded = folded.to(memory_format=torch.channels_last)
        with warnings.catch_warnings():
            # torch 2.x marks TorchScript deprecated in favour of torch.compile (which needs a C++
            # compiler at run time); the frozen module still works and is measured in deep_speed
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.script(folded)
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(scripted.eval()))
        return FastBackbone("torchscript", frozen, channels_last=True, out_channels=out_channels, pool=pool)
    if not onnxruntime_available():
        raise ImportError("backend 'onnxruntime' needs the packages onnx and onnxruntime: "
                          "pip install onnx onnxruntime")
    example = torch.zeros(1, 3, example_size, example_size)
    from retrieval.features.pooling import AvgPool

    # without a pooling module the graph still has a descriptor output (average pooling); describe()
    # refuses to use it, since no pooling was asked for
    session = _onnx_session(_FeaturesAndDescriptor(folded, pool if pool is not None else AvgPool()).eval(),
                            example, threads)
    return FastBackbone("onnxruntime", session=session, out_channels=out_channels, pool=pool)
