"""`repspec-zoo export RUN_DIR --to DIR`: write the Hub-ready folder of a training run, no upload."""
from __future__ import annotations

from ..hub.exporting import export
from . import Parser


def main(argv: list[str]) -> None:
    parser = Parser(prog="repspec-zoo export", description=__doc__)
    parser.add_argument("run_dir", help="training run directory (config.yaml, model.safetensors, eval.json, run.json)")
    parser.add_argument("--to", required=True, help="output folder, e.g. runs/export/<arch>.<tag>")
    parser.add_argument("--repo-id", help="Hub repo the model card points at (default: the zoo's hf_hub_id; none for "
                                          "a run on custom data)")
    parser.add_argument("--force", action="store_true", help="replace an existing export in --to")
    args = parser.parse_args(argv)
    exported = export(args.run_dir, args.to, repo_id=args.repo_id, force=args.force)
    points = (f"card points at {exported.repo_id}" if exported.repo_id else
              "trained on custom data: its card points at no Hub repo; publish it with --repo-id ORG/NAME")
    print(f"exported {exported.name} to {exported.folder} ({points})")
