"""Tests for quantbook.explore_compiled: reading inductor's code, shape costs, the artifact."""

import pytest
import torch
from torch import nn

from quantbook import explore_compiled as ec
from quantbook.methods.inductor import compile_model
from quantbook.records import BenchRecord, save_records

# the shape of what inductor writes for a compiled int8 Linear + residual add on the CPU
pytestmark = pytest.mark.usefixtures("draft_figures")  # structure, not pixels


WRAPPER = '''
cpp_fused_add_native_layer_norm_quantize_per_tensor_view_0 = async_compile.cpp_pybinding(...)

def call(args):
    arg0_1, = args
    assert_size_stride(arg0_1, (8, 128), (128, 1))
    buf0 = empty_strided_cpu((8, 128), (128, 1), torch.uint8)
    cpp_fused_add_native_layer_norm_quantize_per_tensor_view_0(arg0_1, buf0)
    # Topologically Sorted Source Nodes: [linear], Original ATen: [onednn.qlinear]
    buf1 = torch.ops.onednn.qlinear_pointwise.tensor(buf0, 0.02, 128)
    buf2 = torch.ops.onednn.qlinear_pointwise.binary_tensor(buf1, 0.01, 0, arg0_1)
    cpp_fused_clone_transpose_view_1(buf2)
    buf3 = extern_kernels.bmm(buf2, buf2)
    return (buf3, )

def benchmark_compiled_module(times=10, repeat=10):
    cpp_fused_gelu_2(buf0)
'''


def test_kernel_census_counts_what_call_runs():
    census = ec.kernel_census([WRAPPER])
    assert census == {"cpp_fused (generated C++)": 2,
                      "torch.ops.onednn.qlinear_pointwise.tensor": 1,
                      "torch.ops.onednn.qlinear_pointwise.binary_tensor": 1,
                      "extern_kernels.bmm": 1}  # the benchmark helper below call() is not
    assert ec.kernel_census(WRAPPER) == census  # one string is one graph
    with pytest.raises(ValueError, match=r"code holds no 'def call\(' function: pass the "
                                         r"wrapper code"):
        ec.kernel_census(["print(1)"])


def test_fused_ops_names_the_computing_operations():
    assert ec.fused_ops("cpp_fused_add_native_layer_norm_quantize_per_tensor_view") == (
        "add", "layer_norm", "quantize_per_tensor")
    assert ec.fused_ops("cpp_fused__softmax_bitwise_not_div_masked_fill_view") == (
        "softmax", "bitwise_not", "div", "masked_fill")
    assert ec.fused_ops("cpp_fused_clone_transpose_view") == ()
    assert ec.fused_kernels(WRAPPER) == [("add + layer_norm + quantize_per_tensor", 1),
                                         ("(layout only)", 1)]


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(16, 64), nn.Linear(64, 16)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))


def test_capture_and_shape_costs_on_a_real_compile():
    torch.manual_seed(0)
    model = MLP().eval()
    fast = compile_model(model, freezing=False)
    with ec.capture_code() as codes:
        rows = ec.shape_costs(fast, lambda b, t: torch.randn(b, t, 16),
                              [(2, 8), (2, 5), (2, 3)])
    # the first shape compiles; a new length recompiles once with the length dynamic; any
    # later length reuses that graph (and costs no compile)
    assert [r["new_graphs"] for r in rows] == [1, 1, 0]
    assert rows[2]["seconds"] < rows[0]["seconds"]
    assert len(codes) == 2
    assert ec.kernel_census(codes)["cpp_fused (generated C++)"] >= 1
    x = torch.randn(2, 8, 16)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), atol=1e-5, rtol=1e-5)


def record(method, speedup, vs_compiled, latency=1.0, model="minilm"):
    return BenchRecord(model=model, method=method, family="f", metric="lee_pearson",
                       value=0.66, float_value=0.66, size_bytes=1, size_ratio=1.0,
                       secondary={"cosine_mean": 0.99}, latency_ms=latency, speedup=speedup,
                       speedup_vs_compiled=vs_compiled, compile_s=30.0)


def test_load_compiled_and_speedup_rows(tmp_path):
    rows = [record("float32", 1.0, None), record("PT2E", 1.2, 1.1),
            record("untimed", None, None, latency=None)]
    path = save_records(rows, tmp_path / "compiled.json", machine={"cpu_model": "x"})
    meta, loaded = ec.load_compiled(path)
    assert loaded == rows and meta["machine"] == {"cpu_model": "x"}
    table = ec.speedup_rows(loaded, "minilm")
    assert [r["method"] for r in table] == ["float32", "PT2E"]
    assert (table[1]["vs_eager"], table[1]["vs_compiled"], table[1]["cosine"]) == (1.2, 1.1, 0.99)
    with pytest.raises(ValueError, match=r"model='gpt' has no timed records: choose from "
                                         r"\['minilm'\]"):
        ec.speedup_rows(loaded, "gpt")


def test_agreement_splits_real_tokens_from_padding():
    reference = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # (B=1, T=2, hidden=2)
    other = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # differs only at the padded token
    mask = torch.tensor([[1, 0]])
    assert ec.agreement(reference, other) == {"relative_difference": pytest.approx(2 ** -0.5)}
    split = ec.agreement(reference, other, mask)
    assert split == {"relative_difference": pytest.approx(2 ** -0.5),
                     "relative_difference_real": 0.0, "relative_difference_padding": 1.0}
    full = ec.agreement(reference, other, torch.ones(1, 2, dtype=torch.long))
    assert full["relative_difference_padding"] is None
    assert full["relative_difference_real"] == full["relative_difference"]


def test_agreement_on_a_padded_batch_of_a_model():
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(3, 5, 16)
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] * 4 + [0]])
    with torch.no_grad():
        reference = model(x)
        other = reference.clone()
        other[mask == 0] += 0.5  # a compiled model that only differs where pooling looks away
    split = ec.agreement(reference, other, mask)
    assert split["relative_difference_real"] == 0.0
    assert split["relative_difference"] > 0.1 and split["relative_difference_padding"] > 0.1


def test_agreement_errors_name_the_fix():
    reference = torch.ones(2, 3, 4)
    with pytest.raises(ValueError, match=r"other has shape \(2, 3\), reference \(2, 3, 4\): "
                                         r"pass two outputs of the same call"):
        ec.agreement(reference, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(3, 2\): expected "
                                         r"\(2, 3\), the \(batch, tokens\)"):
        ec.agreement(reference, reference, torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"attention_mask is all zeros: it marks no real "
                                         r"token"):
        ec.agreement(reference, reference, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"reference is all zeros over the positions compared"):
        ec.agreement(torch.zeros(2, 3, 4), reference)
    with pytest.raises(TypeError, match=r"other is a dict: pass a tensor \(a model's "
                                        r"output\[0\] or .last_hidden_state"):
        ec.agreement(reference, {"last_hidden_state": reference})
    with pytest.raises(TypeError, match=r"attention_mask is a list: pass a tensor"):
        ec.agreement(reference, reference, [[1, 1, 1], [1, 1, 0]])
