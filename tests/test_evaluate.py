"""Re-evaluating a finished run from its folder: the same test metrics, wherever the folder is now."""

import json
import shutil

import pytest
from attnzoo.config import recipe as recipes
from attnzoo.errors import AttnzooError
from attnzoo.run.evaluate import evaluate_run, final_weights
from attnzoo.run.trainer import train
from conftest import tiny_recipe_dict


@pytest.mark.slow
def test_a_moved_run_evaluates_where_it_is_now_to_its_recorded_metrics(tmp_path, builtin_registry, capsys):
    data = tiny_recipe_dict(tmp_path, data={"max_train_samples": 64, "max_eval_samples": 24})
    tested = train(recipes.from_dict(data, registry=builtin_registry))
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(tmp_path / "run", moved)
    capsys.readouterr()
    report = evaluate_run(moved, registry=builtin_registry)
    for key in ("top1", "top5", "loss", "samples"):
        assert report[key] == tested[key], key
    assert report["weights"] == str(moved / "model.safetensors")
    assert json.loads((moved / "eval.json").read_text()) == report
    assert not (tmp_path / "run").exists()  # nothing written where the run was trained
    assert f"(recorded at the end of training: top1 {tested['top1']:.4f})" in capsys.readouterr().out


def test_final_weights_of_an_unfinished_run_say_how_to_finish_it(tmp_path):
    with pytest.raises(AttnzooError, match="has no model.safetensors: the run has not finished. Finish it with "
                                           "`attnzoo train RECIPE --resume`"):
        final_weights(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert final_weights(tmp_path) == tmp_path / "model.safetensors"
