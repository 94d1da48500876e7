"""The demos give the same numbers whatever ran before them in the process (issue 14, item 9: the graph demo gave
99.44 % alone and 98.89 % after the image demo). Both run at tiny settings here (the ``tiny_demos`` fixture of
conftest.py); the code paths are the demos'."""

import hashlib

import torch

from dfkd_fast.cpsc import demo as image_demo


def graph_result(graph_demo, out):
    summary = graph_demo.run_demo(out, quick=True)
    state = torch.load(out / "acgkd" / "student.pt", weights_only=True)["state_dict"]
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()
    return summary["teacher_acc"], summary["student_acc"], digest


def test_graph_demo_after_the_image_demo_gives_the_same_result_as_alone(tiny_demos, tmp_path, capsys):
    alone = graph_result(tiny_demos, tmp_path / "graph")
    image = image_demo.run_demo(tmp_path / "image", quick=True)
    after = graph_result(tiny_demos, tmp_path / "graph")
    assert after == alone
    torch.rand(7)  # and whatever else drew from the global RNG before the image demo
    assert image_demo.run_demo(tmp_path / "image", quick=True)["student_acc"] == image["student_acc"]
