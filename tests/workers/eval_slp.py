"""Worker: evaluate() a seeded random SLP on self-labelled images across processes; main writes argv[1]."""
import sys

from accelerate import Accelerator

sys.path.insert(0, __file__.rsplit("/", 2)[0])  # tests/ for the shared fixtures
from test_eval import EVAL_SETTINGS, self_labelled, small_slp  # noqa: E402

from repspec_zoo.evaluation.evaluate import evaluate  # noqa: E402

accelerator = Accelerator()
model = small_slp()
x, y = self_labelled(model, n=12)
result = evaluate(model, (x, y), accelerator=accelerator, **EVAL_SETTINGS)
if accelerator.is_main_process:
    with open(sys.argv[1], "w") as f:
        f.write(result.to_json())
accelerator.end_training()  # leave the process group before exit (gloo threads at exit abort)
