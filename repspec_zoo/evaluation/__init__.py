"""The evaluation floor: measuring a classifier's robustness, above the models and the attacks.

* :mod:`.evaluate`: ``evaluate()``, clean accuracy and attack distances with error bars, the bracket;
* :mod:`.result`: ``EvalResult``, its JSON record and summary table;
* :mod:`.stats`: confidence intervals, paired comparisons, robust accuracy (scipy);
* :mod:`.bounds`, :mod:`.lipschitz`: lower bounds of the minimal adversarial distance (with
  :mod:`repspec_zoo.spectral.jacobian`);
* :mod:`.model_checks`: refuses a model no attack number would mean anything for;
* :mod:`.linear_probe`: a linear head fitted on a frozen backbone's features;
* :mod:`.analysis`: the Jacobian analyses (Roth et al. 2019);
* :mod:`.leaderboard`: the zoo's bundled models side by side; :mod:`.plots`: their figures.

Nothing is imported here, so ``import repspec_zoo`` (a timm user) loads none of it.
"""
