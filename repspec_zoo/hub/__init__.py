"""The zoo's weights on disk and on the Hub.

* :mod:`.weights`: reading: where a zoo model's weights are (bundled, HF cache, Hub) and their
  sha256 verification (used by ``pretrained=True``);
* :mod:`.timm_routes`: the same verification on timm's ``hf-hub:`` / ``local-dir:`` names;
* :mod:`.exporting`: writing: a training run -> a Hub-ready folder (export), into the package
  (bundle), onto a Hub (publish);
* :mod:`.provenance`: what an export says it is (name, dataset, classes: what the run trained on),
  with no paths of the training machine;
* :mod:`.cards`: the model card of an export.

Reading never imports the writing side, so the models can load weights without it.
"""
from .weights import PretrainedWeightsError, PretrainedWeightsUnavailable, Weights, load_weights, local_config

__all__ = ["PretrainedWeightsError", "PretrainedWeightsUnavailable", "Weights", "load_weights", "local_config"]
