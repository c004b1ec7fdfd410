"""Every bundled zoo model has a recipe config in recipes/configs/ that re-trains it with the settings it records."""
import json
from pathlib import Path

import pytest

from repspec_zoo.models import pretrained
from repspec_zoo.models.registry import zoo_model_name
from repspec_zoo.training import config_to_dict, load_config
from repspec_zoo.training.config import flatten_config

CONFIGS = Path(__file__).parents[1] / "recipes" / "configs"
IGNORED = ("num_classes", "eval.")  # the data's class count (train.py reads it); the end-of-run check, not training
#: keys removed from the config schema, with the value that means what the schema now does without them
REMOVED = {"regularizer.bn_aware": False}  # bn_aware=true is regularizer.mode=repbn now
BUNDLED = sorted(p.name for p in pretrained.WEIGHTS_DIR.iterdir() if (p / pretrained.HUB_CONFIG_FILE).is_file())


def recipes_of_zoo_names() -> dict[str, list[Path]]:
    """zoo name arch.tag -> the shipped configs that train it (model + regularizer.mode + dataset)."""
    found: dict[str, list[Path]] = {}
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = load_config(path)
        try:
            name = zoo_model_name(cfg.model, cfg.regularizer.mode, cfg.dataset.name, cfg.ssl.method)
        except ValueError:  # not a zoo model (e.g. fine-tuning on another dataset)
            continue
        found.setdefault(name, []).append(path)
    return found


def recorded_command(config: dict) -> tuple[Path, list[str]] | None:
    """(recipe config, KEY=VALUE overrides) of the recorded ``recipes/train.py`` command, if it names a shipped config."""
    words = ((config.get("training") or {}).get("command") or "").split()
    if "--config" not in words:
        return None
    path = Path(__file__).parents[1] / words[words.index("--config") + 1]
    return (path, [w for w in words if "=" in w and not w.startswith("-")]) if path.is_file() else None


def _mismatches(recorded: dict, resolved: dict) -> dict:
    return {k: (v, resolved.get(k, "<absent>")) for k, v in recorded.items()
            if not k.startswith(IGNORED) and resolved.get(k, "<absent>") != v
            and not (k in REMOVED and k not in resolved and v == REMOVED[k])}


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_model_is_retrained_by_a_recipe_config(name):
    """The recorded recipe (config.json `recipe`, the run's resolved config) equals a shipped config's, or what
    the recorded command (a shipped config + an experiment's overrides) resolves to today, key by key: every
    training setting (keys added to the config schema since keep their defaults and are not compared; nor is
    the end-of-run evaluation, which trains nothing)."""
    config = json.loads((pretrained.WEIGHTS_DIR / name / pretrained.HUB_CONFIG_FILE).read_text())
    recorded = flatten_config(config["recipe"])
    candidates = [(path, []) for path in recipes_of_zoo_names().get(name, [])]
    command = recorded_command(config)
    candidates += [command] if command else []
    assert candidates, f"no config in recipes/configs/ trains {name}"
    mismatches = {}
    for path, overrides in candidates:
        key = " ".join([path.name, *overrides])
        mismatches[key] = _mismatches(recorded, flatten_config(config_to_dict(load_config(path, overrides))))
        if not mismatches[key]:
            return
    pytest.fail(f"{name}: no shipped config matches its recorded recipe; (recorded, config) per key: {mismatches}")


def test_a_recipe_recorded_with_experiment_overrides_matches_its_command():
    overrides = ["seed=0", "epochs=9", "regularizer.mode=repbn", "regularizer.gamma=0.002"]
    command = ("recipes/train.py --config recipes/configs/fmnist_resnet_small_repspectral.yaml --output runs/x "
               + " ".join(overrides) + " --branch-from runs/y/checkpoints/step_0000468")
    recipe = config_to_dict(load_config(CONFIGS / "fmnist_resnet_small_repspectral.yaml", overrides))
    config = {"recipe": recipe, "training": {"command": command}}
    path, parsed = recorded_command(config)
    assert path.name == "fmnist_resnet_small_repspectral.yaml" and parsed == overrides
    assert _mismatches(flatten_config(recipe), flatten_config(config_to_dict(load_config(path, parsed)))) == {}
    shipped = flatten_config(config_to_dict(load_config(path)))
    assert set(_mismatches(flatten_config(recipe), shipped)) == {"epochs", "regularizer.mode", "regularizer.gamma"}
