"""ACGKD (Jia et al., arXiv 2504.00540) and its GFKD baseline: data-free distillation of graph classifiers.

* :mod:`~dfkd_fast.acgkd.config`: the methods' configurations (documented defaults);
* :mod:`~dfkd_fast.acgkd.pseudo_graphs`: learnable Binary Concrete pseudo-graphs under the spatial budget xi;
* :mod:`~dfkd_fast.acgkd.student`: the widened student reusing the teacher's classifier;
* :mod:`~dfkd_fast.acgkd.curriculum`, :mod:`~dfkd_fast.acgkd.losses`: easy-to-hard order, adversarial temperature;
* :mod:`~dfkd_fast.acgkd.trainer` (ACGKD), :mod:`~dfkd_fast.acgkd.gfkd` (GFKD baseline, KD with real graphs);
* :mod:`~dfkd_fast.acgkd.methods`: ``make_trainer``, the trainer of each method;
* :mod:`~dfkd_fast.acgkd.cli`, :mod:`~dfkd_fast.acgkd.teacher`, :mod:`~dfkd_fast.acgkd.evaluate`,
  :mod:`~dfkd_fast.acgkd.demo`: the ``dfkd-fast`` commands and the graph demo.
"""
