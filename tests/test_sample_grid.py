"""Sample grids carry the class of each row (issue 14, low: grids without class labels)."""

import numpy as np
import pytest
import torch
from PIL import Image

from dfkd_fast.data.images import save_image_grid


def test_row_labels_are_drawn_in_a_left_margin(tmp_path):
    images = torch.full((6, 1, 8, 8), 0.5)
    save_image_grid(images, tmp_path / "plain.png", nrow=3)
    save_image_grid(images, tmp_path / "labelled.png", nrow=3, row_labels=["y=0", "y=1"])
    plain, labelled = np.asarray(Image.open(tmp_path / "plain.png")), np.asarray(Image.open(tmp_path / "labelled.png"))
    assert labelled.shape[0] == plain.shape[0] and labelled.shape[1] > plain.shape[1]
    margin = labelled.shape[1] - plain.shape[1]
    np.testing.assert_array_equal(labelled[:, margin:], plain)  # the tiles are untouched
    for row in range(2):  # dark text in each row's margin, white elsewhere
        band = labelled[2 + row * 34:2 + row * 34 + 32, :margin]
        assert (band < 128).any()
    with pytest.raises(ValueError, match="2 rows but 1 row_labels"):
        save_image_grid(images, tmp_path / "x.png", nrow=3, row_labels=["y=0"])


@pytest.mark.parametrize("num_classes,rows", [(10, [f"y={c}" for c in range(10)]),
                                               (100, [f"y={10 * r}-{10 * r + 9}" for r in range(10)])])
def test_cpsc_grid_labels_each_row_with_its_classes(tmp_path, monkeypatch, num_classes, rows):
    from dfkd_fast.cpsc import CPSCConfig, CPSCTrainer
    from dfkd_fast.cpsc import trainer as trainer_module
    from dfkd_fast.models import ConditionalGenerator
    from dfkd_fast.models.small_cnn import SmallCNN

    seen = {}
    monkeypatch.setattr(trainer_module, "save_image_grid", lambda images, path, nrow, row_labels: seen.update(
        n=len(images), nrow=nrow, labels=row_labels))
    cfg = CPSCConfig(teacher="small_cnn", student="small_cnn", dataset="digits", batch_size=4, nz=8, ngf=4)
    tr = CPSCTrainer(cfg, SmallCNN(num_classes, 1, width=4), SmallCNN(num_classes, 1, width=4),
                     ConditionalGenerator(nz=8, ngf=4, nc=1, img_size=8, num_classes=num_classes),
                     norm=((0.5,), (0.5,)), log=lambda *a: None)
    tr.sample_grid(tmp_path / "grid.png")
    assert seen["labels"] == rows and seen["n"] == len(rows) * seen["nrow"]
