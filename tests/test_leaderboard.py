"""The leaderboard: same images for every model, paired deltas to the family baseline, tables and
plots from the results, README markers, and re-written bundled cards."""
import json
import shutil

import pytest
from huggingface_hub import ModelCard

import repspec_zoo  # noqa: F401
from repspec_zoo.evaluation import leaderboard
from repspec_zoo.cli.leaderboard import main as leaderboard_main
from repspec_zoo.hub import exporting
from repspec_zoo.models import pretrained

SLPS = ["slp_baseline.fmnist", "slp_repspectral.fmnist"]


def test_family_baseline():
    assert leaderboard.family_baseline("slp_repspectral.fmnist", "fashion_mnist") == "slp_baseline.fmnist"
    assert leaderboard.family_baseline("resnet_small_ddsnr.fmnist", "fashion_mnist") == "resnet_small_baseline.fmnist"
    assert leaderboard.family_baseline("slp_baseline.fmnist", "fashion_mnist") is None
    assert leaderboard.family_baseline("resnet50", "imagenet1k") is None
    assert (leaderboard.family_baseline("resnet_small_repspectral.fmnist_simclr", "fashion_mnist")
            == "resnet_small_baseline.fmnist_simclr")


def test_self_supervised_backbones_get_a_probe_and_shared_images(tmp_path):
    """Headless SimCLR backbones: each gets the linear probe `repspec-zoo probe --train-limit 5000`
    fits (the same fit: same train accuracy), all are attacked on the same images, and the rep one
    is compared with the SimCLR baseline, not with the supervised one."""
    import torch

    from repspec_zoo import data
    from repspec_zoo.loader import load_model
    from repspec_zoo.evaluation.linear_probe import fit_probe

    names = ["resnet_small_baseline.fmnist_simclr", "resnet_small_repspectral.fmnist_simclr"]
    results = leaderboard_main(["--models", *names, "--n", "4", "--budgets", "20", "--attack", "ta", "--out",
                                str(tmp_path)])
    saved = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in names}
    assert saved[names[0]]["per_sample"]["index"] == saved[names[1]]["per_sample"]["index"]
    probe = saved[names[1]]["settings"]["probe"]
    assert probe["n_train"] == leaderboard.PROBE_TRAIN_LIMIT and probe["classes"] == 10
    train = data.load_split("fashion_mnist", "train", limit=leaderboard.PROBE_TRAIN_LIMIT, seed=0)
    direct = fit_probe(load_model(names[1]), train, seed=0)
    assert probe["train_acc"] == pytest.approx(direct.train_acc, abs=1e-9)
    x, y = data.as_tensors(data.load_split("fashion_mnist", "test"))
    with torch.no_grad():
        acc = (direct.model.eval()(x).argmax(1) == y).float().mean().item()
    assert results[names[1]].clean_acc == pytest.approx(acc, abs=2e-4)  # folded forward: rounding only
    paired = json.loads((tmp_path / "leaderboard.json").read_text())["paired_vs_baseline"]
    assert paired[names[1]]["baseline"] == names[0]


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    out = tmp_path_factory.mktemp("board")
    readme = out / "README.md"
    readme.write_text("intro\n<!-- leaderboard:start -->\nold\n<!-- leaderboard:end -->\nrest\n")
    results = leaderboard_main(["--models", *SLPS, "--n", "6", "--budgets", "40,80", "--attack", "ta,fmn",
                                "--out", str(out), "--update-readme", str(readme)])
    return out, readme, results


def test_every_model_is_attacked_on_the_same_images(board):
    out, _, results = board
    saved = {name: json.loads((out / f"{name}.json").read_text()) for name in SLPS}
    index = saved[SLPS[0]]["per_sample"]["index"]
    assert len(index) == 6 and all(s["per_sample"]["index"] == index for s in saved.values())
    summary = json.loads((out / "leaderboard.json").read_text())
    assert summary["index"] == index and summary["attacks"] == ["ta", "fmn"]
    paired = summary["paired_vs_baseline"]["slp_repspectral.fmnist"]
    assert paired["baseline"] == "slp_baseline.fmnist" and paired["n_pairs"] == 6
    assert set(summary["paired_vs_baseline"]) == {"slp_repspectral.fmnist"}
    for name, r in results.items():
        assert r.distance["n_samples"] == 6 and r.success_rate["80"] == 1.0  # every sample got a start


def test_tables_plots_and_readme_come_from_the_results(board):
    out, readme, results = board
    text = readme.read_text()
    assert text.startswith("intro\n<!-- leaderboard:start -->\n") and text.endswith("<!-- leaderboard:end -->\nrest\n")
    assert "old" not in text and (out / "leaderboard.md").read_text().strip() in text
    r = results["slp_repspectral.fmnist"]
    assert f"| `slp_repspectral.fmnist` | {r.clean_acc:.4f} | {r.distance['success_rate']['estimate']:.3f} [" in text
    assert "| model | certified radius (mean) |" in text and "beyond noise" in text
    assert "--attack ta,fmn" in text
    for png in ("distance_vs_queries.png", "robust_accuracy.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_paired_deltas_refuse_different_images(board):
    _, _, results = board
    other = dict(results)
    moved = json.loads(other["slp_repspectral.fmnist"].to_json())
    other["slp_repspectral.fmnist"] = type(results["slp_baseline.fmnist"])(**{
        **moved, "per_sample": {**moved["per_sample"], "index": [i + 1 for i in moved["per_sample"]["index"]]}})
    with pytest.raises(ValueError, match="different images"):
        leaderboard.paired_deltas(other, "fashion_mnist", seed=0)


def test_update_bundled_evaluation_rewrites_card_and_keeps_weights(board, tmp_path, monkeypatch):
    _, _, results = board
    name = "slp_repspectral.fmnist"
    weights = tmp_path / "repspec_zoo" / "weights"
    shutil.copytree(pretrained.WEIGHTS_DIR / name, weights / name)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights)
    folder = weights / name
    sha = json.loads((folder / "config.json").read_text())["weights_sha256"]
    weight_bytes = (folder / "model.safetensors").read_bytes()
    evaluation = json.loads(results[name].to_json())
    assert exporting.update_bundled_evaluation(name, evaluation) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "eval.json", "model.safetensors"]
    assert (folder / "model.safetensors").read_bytes() == weight_bytes
    config = json.loads((folder / "config.json").read_text())
    assert config["weights_sha256"] == sha and config["eval"]["attacks"] == ["ta", "fmn"]
    assert "per_sample" not in config["eval"] and json.loads((folder / "eval.json").read_text()) == evaluation
    card = ModelCard.load(folder / "README.md")
    metrics = {(m.metric_type, m.metric_config) for m in card.data.eval_results}
    assert {("ensemble_l2_mean", "queries=80"), ("ensemble_success_rate", "queries=80"),
            ("robust_accuracy_upper_bound", "l2_eps=1.5")} <= metrics
    assert "best of TA+FMN success rate, 95% Clopper-Pearson CI" in card.text
    with pytest.raises(exporting.ExportError, match="no bundled folder"):
        exporting.update_bundled_evaluation("slp_baseline.fmnist", evaluation)


def test_cards_state_the_paired_comparison_with_the_family_baseline(board, tmp_path, monkeypatch):
    """--update-cards: a regularized model's card carries the leaderboard's paired change against its
    baseline (same images), as the leaderboard's own summary has it; the baseline's card has none."""
    out, _, _ = board
    weights = tmp_path / "repspec_zoo" / "weights"
    for name in SLPS:
        shutil.copytree(pretrained.WEIGHTS_DIR / name, weights / name)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights)
    leaderboard_main(["--out", str(out), "--report-only", "--update-cards"])
    paired = json.loads((out / "leaderboard.json").read_text())["paired_vs_baseline"]["slp_repspectral.fmnist"]
    d = paired["mean_difference"]
    card = (weights / "slp_repspectral.fmnist" / "README.md").read_text()
    assert (f"| mean L2 change against `slp_baseline.fmnist` on the same 6 images, 95% paired bootstrap CI "
            f"(Wilcoxon p) | {d['estimate']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]") in card
    assert "mean L2 change against" not in (weights / "slp_baseline.fmnist" / "README.md").read_text()


def test_report_only_rerenders_the_same_tables(board):
    out, _, results = board
    before = (out / "leaderboard.md").read_text(), json.loads((out / "leaderboard.json").read_text())
    again = leaderboard_main(["--out", str(out), "--report-only"])
    assert (out / "leaderboard.md").read_text() == before[0]
    assert json.loads((out / "leaderboard.json").read_text()) == before[1]
    for name, r in results.items():  # EvalResult.load gives back the saved numbers, inf included
        assert again[name].per_sample["l2"] == r.per_sample["l2"] and again[name].l2_median == r.l2_median


def test_rerun_keeps_finished_models_and_workers_give_the_same_numbers(board, tmp_path, monkeypatch, capsys):
    out, _, results = board
    argv = ["--models", *SLPS, "--n", "6", "--budgets", "40,80", "--attack", "ta,fmn", "--out", str(out)]

    def no_attack(*args, **kwargs):
        raise AssertionError("a finished model was attacked again")

    monkeypatch.setattr(leaderboard, "evaluate", no_attack)
    again = leaderboard_main(argv)
    assert capsys.readouterr().out.count("kept") == 2
    assert all(again[n].per_sample["l2_by_attack"] == results[n].per_sample["l2_by_attack"] for n in SLPS)
    monkeypatch.undo()
    # two worker processes (one thread each) give the single process's numbers
    parallel = leaderboard_main([*argv[:-1], str(tmp_path), "--workers", "2"])
    for name in SLPS:
        assert parallel[name].per_sample["l2_by_attack"] == results[name].per_sample["l2_by_attack"]
