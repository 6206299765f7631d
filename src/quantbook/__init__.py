"""quantbook: the helper package of *Quantizing Transformers with PyTorch*.

Modules are imported on demand (``from quantbook import affine``) so that ``import quantbook``
stays cheap and pulls in neither transformers nor torchao.

Where things are:

* the math: :mod:`~quantbook.grid` (code ranges, scale and zero point), :mod:`~quantbook.ranges`
  (which range to cover), :mod:`~quantbook.affine` (quantize, dequantize), :mod:`~quantbook.packing`
  (n-bit packing and the bytes it takes);
* the methods: :mod:`quantbook.methods`, one shape for all,
  ``quantized, report = quantize_<method>(model, config[, batches])``, with the checks of
  :mod:`~quantbook.validate` at the boundary;
* the workloads and their measurement: :mod:`~quantbook.gpt`, :mod:`~quantbook.minilm`,
  :mod:`~quantbook.data`, :mod:`~quantbook.evaluate`, :mod:`~quantbook.measure`,
  :mod:`~quantbook.profiling`, :mod:`~quantbook.workloads`, and the one sweep engine
  :mod:`~quantbook.sweep` that turns a method on a workload into a
  :class:`~quantbook.records.BenchRecord` (``make bench``: :mod:`~quantbook.bench`);
* the chapters' helpers: :mod:`~quantbook.kit` (set-up, glue, tables) and one
  ``explore_<topic>`` module per topic, plus :mod:`~quantbook.choose` for the decision guide.

The vocabulary, used everywhere:

``bits``
    code width, 2..8.
``scheme``
    ``"symmetric"`` (zero point 0, signed codes) or ``"asymmetric"`` (unsigned codes with a
    zero point).
``granularity``
    ``"tensor"``, ``"channel"`` or ``"group"``: how many values share one scale.
``group_size``
    values per scale with ``granularity="group"``, contiguous along a row.
``scale``, ``zero_point``, ``qmin``, ``qmax``
    the grid: ``x_hat = (q - zero_point) * scale`` with ``q`` in ``[qmin, qmax]``.
``targets``
    module *groups* to quantize (``"attention"``, ``"ffn"``, ``"embeddings"``, ``"head"``);
    module names go in ``modules`` or ``exclude``. A display string is a ``label``.
``label``, ``family``
    a method's display name (``"dynamic int8 per-tensor"``) and the family it belongs to
    (``"dynamic (eager)"``), both stored, never parsed back.
``*_bytes``
    sizes in bytes: ``size_bytes`` (serialized state dict), ``tensor_bytes`` (tensor data only),
    ``packed_bytes`` and ``storage_bytes`` (what packed codes and scales take).
``latency_ms``, ``speedup``
    median wall time of a call in milliseconds, and a ratio of medians timed side by side.
``cosine_mean``
    mean cosine between quantized and float32 embeddings.
"""

__version__ = "0.1.0"
