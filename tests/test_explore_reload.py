"""The save-and-reload helpers of the compiled-path chapter."""

import torch
from torch import nn

from quantbook import explore_reload as er


def _program(path_length: int) -> torch.export.ExportedProgram:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    program = torch.export.export(model, (torch.randn(2, 8),))
    for node in program.graph.nodes:  # what a checkout at a longer path would record
        node.meta["stack_trace"] = f'File "/{"x" * path_length}/model.py", line 1, in forward'
    return program


def test_saved_program_size_does_not_depend_on_source_paths(tmp_path):
    sizes = []
    for length in (5, 500):
        workdir = tmp_path / str(length)
        workdir.mkdir()
        x = torch.randn(2, 8)
        sizes.append(er.save_for_reload(workdir, _program(length), nn.Linear(8, 4), x,
                                        {"pt2e": torch.zeros(2, 4)})["pt2e.pt2"])
        assert b"x" * 100 not in (workdir / "pt2e.pt2").read_bytes()
    assert sizes[0] == sizes[1]
