"""Weight-only quantization with 2..8-bit codes that are really stored packed.

Each targeted ``nn.Linear`` becomes a :class:`PackedLinear` and each ``nn.Embedding`` a
:class:`PackedEmbedding`. Both keep, as registered buffers (so the ``state_dict`` holds exactly
these bytes):

* ``packed``: the integer codes as a dense bitstream, ``bits`` bits per weight (uint8);
* ``scale``: float32, one per tensor / output channel (row) / group;
* ``zero_point``: uint8, same shape as ``scale``, only for ``scheme="asymmetric"``;
* ``bias`` (Linear only), float as it was.

Scales cost 4 bytes each: per channel that is 4 bytes per row of weights, negligible; with
``group_size=32`` at 4 bits it adds 1 bit per weight (32 bits / 32 weights), a quarter of the
code bytes, and ``zero_point`` adds another 0.25 bit per weight. Float16 scales would halve that
at a small accuracy cost; we keep float32 so that the codes match :mod:`quantbook.affine`.

The forward pass dequantizes the weight on the fly, ``(code - zero_point) * scale``, then calls
``F.linear``: activations stay float, memory shrinks, compute does not get faster.
"""

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from quantbook import affine, packing
from quantbook.methods.report import QuantReport, float_leaf_modules, require_converted
from quantbook.targets import GROUPS, resolve_targets

DEFAULT_TARGETS = ("attention", "ffn")


@dataclass(frozen=True)
class WeightOnlyConfig:
    """Settings for :func:`quantize_weights`; validated by :class:`affine.QuantSpec`."""

    bits: int = 4
    scheme: str = "symmetric"  # zero_point is 0, so nothing but the scale is stored per channel
    granularity: str = "channel"  # one scale per output channel (Linear) or per row (Embedding)
    group_size: int | None = None  # "group" only: inputs per scale, contiguous along each row
    targets: tuple[str, ...] = DEFAULT_TARGETS  # groups of quantbook.targets.GROUPS
    range_method: str = "minmax"  # "minmax" | "percentile" | "mse", as in QuantSpec

    def __post_init__(self) -> None:
        targets = (self.targets,) if isinstance(self.targets, str) else self.targets
        if not isinstance(targets, tuple | list) or not targets:
            raise TypeError(
                f"targets={self.targets!r} must be a non-empty tuple of group names, "
                f"e.g. targets={DEFAULT_TARGETS!r}"
            )
        unknown = [t for t in targets if t not in GROUPS]
        if unknown:
            raise ValueError(
                f"targets={tuple(targets)!r} names unknown groups {unknown}: "
                f"choose from {', '.join(GROUPS)}"
            )
        object.__setattr__(self, "targets", tuple(targets))  # lists become hashable tuples
        self.spec()  # raises for bad bits / scheme / granularity / group_size / range_method

    def spec(self) -> affine.QuantSpec:
        """The :class:`affine.QuantSpec` applied to every weight (axis 0 = output channel)."""
        return affine.QuantSpec(
            bits=self.bits,
            scheme=self.scheme,
            granularity=self.granularity,
            axis=0,
            group_size=self.group_size,
            range_method=self.range_method,
        )

    @property
    def method(self) -> str:
        """Short name for reports, e.g. ``"weight-only int4 group32"``."""
        how = {"tensor": "per-tensor", "channel": "per-channel"}.get(
            self.granularity, f"group{self.group_size}"
        )
        suffix = " asymmetric" if self.scheme == "asymmetric" else ""
        return f"weight-only int{self.bits} {how}{suffix}"


class _PackedWeight(nn.Module):
    """Buffers and dequantization of one packed 2-D weight of shape ``(rows, cols)``."""

    def __init__(self, rows: int, cols: int, spec: affine.QuantSpec) -> None:
        super().__init__()
        if spec.granularity == "channel" and spec.axis != 0:
            raise ValueError(f"axis={spec.axis} is not supported: packed weights use axis=0")
        if spec.granularity == "group" and cols % spec.group_size:
            raise ValueError(
                f"group_size={spec.group_size} does not divide the {cols} inputs of each row: "
                f"choose a divisor of {cols}"
            )
        self.spec, self.rows, self.cols = spec, rows, cols
        qshape = {"tensor": (), "channel": (rows,)}.get(
            spec.granularity, (rows, cols // (spec.group_size or 1))
        )
        nbytes = packing.packed_nbytes(rows * cols, spec.bits)
        self.register_buffer("packed", torch.zeros(nbytes, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(qshape, dtype=torch.float32))
        zero_point = torch.zeros(qshape, dtype=torch.uint8)  # asymmetric codes are 0..2^b-1
        self.register_buffer("zero_point", zero_point if spec.scheme == "asymmetric" else None)

    @torch.no_grad()
    def _store(self, weight: torch.Tensor) -> None:
        """Quantize ``weight`` (rows, cols) and fill the buffers in place."""
        codes, qparams = affine.quantize_tensor(weight.detach().float(), self.spec)
        unsigned = packing.to_unsigned(codes.flatten(), self.spec.bits, self.spec.scheme)
        self.packed.copy_(packing.pack(unsigned, self.spec.bits))
        self.scale.copy_(qparams.scale)
        if self.zero_point is not None:
            self.zero_point.copy_(qparams.zero_point.to(torch.uint8))

    def _dequantize(self, packed: torch.Tensor, n_rows: int, rows: torch.Tensor | None = None):
        """float32 ``(n_rows, cols)`` from the packed codes of ``n_rows`` rows.

        ``rows`` (int64 indices) selects the matching scales; ``None`` means all rows in order.
        """
        unsigned = packing.unpack(packed, self.spec.bits, n_rows * self.cols)
        codes = packing.from_unsigned(unsigned, self.spec.bits, self.spec.scheme)
        codes = codes.view(n_rows, self.cols)  # (n_rows, cols)
        scale, zero_point = self.scale, self.zero_point
        if rows is not None and self.spec.granularity != "tensor":
            scale = scale[rows]
            zero_point = None if zero_point is None else zero_point[rows]
        if self.spec.granularity == "channel":
            scale = scale[:, None]  # (n_rows, 1)
            zero_point = None if zero_point is None else zero_point[:, None]
        elif self.spec.granularity == "group":
            codes = codes.view(n_rows, -1, self.spec.group_size)  # (n_rows, groups, group_size)
            scale = scale[..., None]  # (n_rows, groups, 1)
            zero_point = None if zero_point is None else zero_point[..., None]
        values = codes.float()
        if zero_point is not None:
            values = values - zero_point.float()
        return (values * scale).reshape(n_rows, self.cols)  # (n_rows, cols)

    def _spec_repr(self) -> str:
        s = self.spec
        text = f"bits={s.bits}, scheme={s.scheme}, granularity={s.granularity}"
        return text + (f", group_size={s.group_size}" if s.granularity == "group" else "")


class PackedLinear(_PackedWeight):
    """``nn.Linear`` whose weight is stored as packed ``bits``-bit codes plus scales.

    Args:
        in_features, out_features, bias: as for ``nn.Linear``.
        spec: how the weight is quantized (``axis`` must be 0, the output channel).
        cache_weight: keep the dequantized weight after the first forward (faster, but holds a
            float32 copy in memory; it is never saved in the ``state_dict``).
    """

    def __init__(self, in_features: int, out_features: int, spec: affine.QuantSpec,
                 bias: bool = True, cache_weight: bool = False) -> None:
        super().__init__(out_features, in_features, spec)
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.cache_weight = cache_weight
        self.register_buffer("_cached_weight", None, persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: affine.QuantSpec,
                    cache_weight: bool = False) -> "PackedLinear":
        """Quantize ``linear.weight`` with ``spec``; the bias is copied unchanged."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear is a {type(linear).__name__}: expected nn.Linear")
        module = cls(linear.in_features, linear.out_features, spec,
                     bias=linear.bias is not None, cache_weight=cache_weight)
        module._store(linear.weight)
        if linear.bias is not None:
            module.bias = linear.bias.detach().clone()
        return module

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized float32 weight, ``(out_features, in_features)``, rebuilt per call."""
        return self._dequantize(self.packed, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self._cached_weight
        if weight is None:
            weight = self.weight
            if self.cache_weight:
                self._cached_weight = weight
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, weight.to(x.dtype), bias)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._cached_weight = None  # new codes invalidate the cache
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self._spec_repr()}")


class PackedEmbedding(_PackedWeight):
    """``nn.Embedding`` whose table is stored as packed ``bits``-bit codes plus scales.

    "channel" means one scale per row (token); groups run along the embedding dimension. When a
    row's codes fill whole bytes (``embedding_dim * bits % 8 == 0``, true for any dim divisible
    by 8) the forward pass unpacks only the looked-up rows; otherwise it dequantizes the table.
    For MiniLM's 30522 x 384 table and 16 x 128 token ids at 4 bits, on one CPU thread, that
    is about 7 ms instead of 500 ms (a float lookup takes 0.1 ms).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, spec: affine.QuantSpec,
                 padding_idx: int | None = None) -> None:
        super().__init__(num_embeddings, embedding_dim, spec)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, spec: affine.QuantSpec) -> "PackedEmbedding":
        """Quantize ``embedding.weight`` with ``spec`` (``max_norm`` is not supported)."""
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"embedding is a {type(embedding).__name__}: expected nn.Embedding")
        if embedding.max_norm is not None:
            raise ValueError(
                f"max_norm={embedding.max_norm} renormalizes the table in place at lookup: "
                "a packed table cannot do that; leave this embedding in float"
            )
        module = cls(embedding.num_embeddings, embedding.embedding_dim, spec,
                     padding_idx=embedding.padding_idx)
        module._store(embedding.weight)
        return module

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized float32 table, ``(num_embeddings, embedding_dim)``."""
        return self._dequantize(self.packed, self.num_embeddings)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        row_bits = self.embedding_dim * self.spec.bits
        if row_bits % 8:
            return F.embedding(indices, self.weight, self.padding_idx)
        rows = indices.reshape(-1).long()  # (n,)
        if rows.numel() and not 0 <= int(rows.min()) <= int(rows.max()) < self.num_embeddings:
            raise IndexError(
                f"indices range over {int(rows.min())}..{int(rows.max())}, outside this "
                f"table's 0..{self.num_embeddings - 1}"
            )
        row_bytes = self.packed.view(self.num_embeddings, row_bits // 8)[rows]  # (n, row_bytes)
        values = self._dequantize(row_bytes.reshape(-1), rows.numel(), rows)  # (n, dim)
        return values.view(*indices.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}, {self._spec_repr()}"


def select_modules(model: nn.Module, config: WeightOnlyConfig
                   ) -> tuple[list[str], list[tuple[str, str]]]:
    """``(names to quantize, [(name, reason)] left float)`` for ``config.targets``.

    Raises:
        ValueError: a group is unknown or absent from ``model``, ``config.group_size`` does not
            divide a target's input size, or nothing would be converted.
    """
    spec = config.spec()
    by_group = resolve_targets(model, config.targets)
    names = list(dict.fromkeys(n for group in config.targets for n in by_group[group]))
    converted, skipped = [], []
    for name in names:
        reason = _skip_reason(name, model.get_submodule(name), spec)
        if reason is None:
            converted.append(name)
        else:
            skipped.append((name, reason))
    require_converted(converted, method=config.method, targets=config.targets)
    return converted, skipped


def _skip_reason(name: str, module: nn.Module, spec: affine.QuantSpec) -> str | None:
    """Why ``module`` stays float (``None``: it can be quantized with ``spec``).

    Raises:
        ValueError: ``spec.group_size`` does not divide the module's input size.
    """
    if isinstance(module, nn.Linear):
        kind, n_inputs = "in_features", module.in_features
    elif isinstance(module, nn.Embedding):
        if module.max_norm is not None:
            return f"max_norm={module.max_norm} renormalizes the table at lookup"
        kind, n_inputs = "embedding_dim", module.embedding_dim
    else:
        return f"{type(module).__name__} is not nn.Linear or nn.Embedding"
    if spec.granularity == "group" and n_inputs % spec.group_size:
        divisors = [d for d in range(1, n_inputs + 1) if n_inputs % d == 0 and d <= 256]
        raise ValueError(
            f"group_size={spec.group_size} does not divide {kind}={n_inputs} of module "
            f"{name!r}: choose a divisor of {n_inputs} such as {divisors[-4:]}, or leave "
            "this module's group out of targets"
        )
    return None


def quantize_weights(model: nn.Module, config: WeightOnlyConfig = WeightOnlyConfig()
                     ) -> tuple[nn.Module, QuantReport]:
    """Return a copy of ``model`` with packed weights in the targeted groups, and a report.

    Every nn.Linear / nn.Embedding that ``quantbook.targets.resolve_targets`` lists for
    ``config.targets`` is replaced; other modules of those groups are reported as skipped.
    ``model`` itself is not modified.

    Raises:
        ValueError: nothing was converted, a group is unknown or absent from this model, or
            ``group_size`` does not divide a target's input size.
    """
    if not isinstance(config, WeightOnlyConfig):
        raise TypeError(f"config is a {type(config).__name__}: expected a WeightOnlyConfig")
    converted, skipped = select_modules(model, config)  # checks everything before copying
    spec = config.spec()
    quantized = copy.deepcopy(model)
    for name in converted:
        parent_name, _, child = name.rpartition(".")
        parent, module = quantized.get_submodule(parent_name), quantized.get_submodule(name)
        if isinstance(module, nn.Linear):
            packed = PackedLinear.from_linear(module, spec)
        else:
            packed = PackedEmbedding.from_embedding(module, spec)
        packed.to(module.weight.device).train(module.training)
        setattr(parent, child, packed)
    report = QuantReport(
        method=config.method,
        converted=tuple(converted),
        skipped=tuple(skipped),
        float_modules=float_leaf_modules(quantized, exclude=converted),
    )
    return quantized, report
