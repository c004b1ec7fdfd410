"""`repspec-zoo publish RUN_DIR [--repo-id ORG/NAME] [--endpoint URL] [--private]`: export a run and upload it."""
from __future__ import annotations

from ..hub.exporting import publish
from . import Parser


def main(argv: list[str]) -> None:
    parser = Parser(prog="repspec-zoo publish", description=__doc__)
    parser.add_argument("run_dir", help="training run directory (config.yaml, model.safetensors, eval.json, run.json)")
    parser.add_argument("--repo-id", help="Hub repo org/name (default: the zoo's hf_hub_id for the run; required for a "
                                          "run on custom data)")
    parser.add_argument("--endpoint", help="Hub URL (default: HF_ENDPOINT or https://huggingface.co)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    args = parser.parse_args(argv)
    url = publish(args.run_dir, repo_id=args.repo_id, endpoint=args.endpoint, private=args.private)
    print(f"published: {url}")
