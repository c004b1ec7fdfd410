"""Publishing the zoo's weights: the writing side, above the models (which read and verify them,
:mod:`repspec_zoo.models.pretrained` and :mod:`repspec_zoo.models.timm_routes`).

* :mod:`.exporting`: a training run -> a Hub-ready folder (export), into the package (bundle),
  onto a Hub (publish);
* :mod:`.provenance`: what an export says it is (name, dataset, classes: what the run trained on),
  with no paths of the training machine;
* :mod:`.cards`: the model card of an export.
"""
