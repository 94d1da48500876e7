"""The image demo, shortened: a teacher trained on real digits, then CPSC-DFKD students distilled without the
training images. The trained generator must teach better than the same generator frozen at its initialisation
(identical student steps, seeds and batches; G_steps = 0 never updates the generator)."""

import dataclasses

from dfkd_fast.cpsc import demo


def test_trained_generator_beats_a_frozen_one(tmp_path):
    teacher, teacher_acc, (_, test) = demo.train_teacher(tmp_path, quick=True, log=lambda *a: None)
    assert teacher_acc > 0.9
    cfg = demo.demo_config(quick=True)
    trained = demo.distil(teacher, cfg, test, tmp_path / "cpsc", log=lambda *a: None)
    frozen = demo.distil(teacher, dataclasses.replace(cfg, G_steps=0), test, log=lambda *a: None)
    assert trained["acc"] > frozen["acc"] + 0.05, (trained["acc"], frozen["acc"])
    assert trained["acc"] > 0.6 * teacher_acc
    assert (tmp_path / "teacher.pt").is_file() and (tmp_path / "cpsc" / "final_student.pt").is_file()
