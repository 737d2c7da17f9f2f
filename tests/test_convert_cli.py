"""The convert program, both directions, in-process and once through `python -m hpjax.main`."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from hpjax import checkpoints
from hpjax.checkpoints import convert
from hpjax.models import get_model_config
from openclip_reference import TINY_JSON, openclip_model, state_dict_numpy

REPO = pathlib.Path(__file__).parents[1]
sys.path.insert(0, str(REPO))
from configs import convert as convert_config  # pylint: disable=wrong-import-position
from configs import eval_hp  # pylint: disable=wrong-import-position
from hpjax.evaluate import runner  # pylint: disable=wrong-import-position


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  state_dict = state_dict_numpy(openclip_model("hpjax-tiny"))
  path = tmp_path_factory.mktemp("source") / "tiny.safetensors"
  return state_dict, checkpoints.write_state_dict(state_dict, path)


def test_both_directions_round_trip_bit_identical(source, tmp_path):
  state_dict, path = source
  to_hpjax = convert.run(convert_config.get_config(f"src={path},model=hpjax-tiny"), tmp_path)
  assert to_hpjax["dst"] == str(tmp_path / "params") and to_hpjax["tensors"] == len(state_dict)
  assert to_hpjax["parameters"] == sum(v.size for v in state_dict.values())
  back = convert.run(convert_config.get_config(
      f"src={tmp_path / 'params'},model=hpjax-tiny,direction=to_openclip"), tmp_path)
  exported = checkpoints.read_state_dict(back["dst"])
  assert sorted(exported) == sorted(state_dict)
  for key, value in state_dict.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  assert json.loads((tmp_path / "convert_summary.json").read_text()) == back


def test_refuses_to_overwrite_and_unknown_arguments(source, tmp_path):
  _, path = source
  with pytest.raises(FileExistsError, match="tiny.safetensors exists"):
    convert.run(convert_config.get_config(f"src={path},dst={path},direction=to_openclip,"
                                          "model=hpjax-tiny"), tmp_path)
  with pytest.raises(ValueError, match="direction is 'sideways'"):
    convert.run(convert_config.get_config(f"src={path},direction=sideways"), tmp_path)
  with pytest.raises(ValueError, match="unknown argument 'source'"):
    convert_config.get_config("source=x")


def test_command_line_prints_progress_and_summary(source, tmp_path):
  _, path = source
  dst = tmp_path / "out.bin"
  result = subprocess.run(
      [sys.executable, "-m", "hpjax.main", f"--workdir={tmp_path}",
       f"--config={REPO / 'configs' / 'convert.py'}:src={path},model={TINY_JSON},"
       f"direction=to_openclip,dst={dst}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert "[convert 1/3] reading" in result.stderr and "[convert 3/3] done:" in result.stderr
  assert f"dst={dst}" in result.stderr
  exported = checkpoints.read_state_dict(dst)
  np.testing.assert_array_equal(exported["visual.proj"], source[0]["visual.proj"])


def test_tools_script_converts_to_hpjax(source, tmp_path):
  state_dict, path = source
  dst = tmp_path / "params"
  result = subprocess.run(
      [sys.executable, str(REPO / "tools" / "convert.py"), f"--src={path}", "--model=hpjax-tiny",
       f"--dst={dst}"], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  summary = json.loads(result.stdout)
  assert summary["dst"] == str(dst) and summary["tensors"] == len(state_dict)
  assert (tmp_path / "convert_summary.json").exists()
  restored = checkpoints.load_params(dst, get_model_config("hpjax-tiny"))
  np.testing.assert_array_equal(restored["visual"]["proj"], state_dict["visual.proj"])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights_are_refused_naming_the_parameter(source, tmp_path, bad):
  """Converted without a word, they would score every caption alike; the evaluation (which
  builds through the same load) stops before any report too."""
  state_dict, _ = source
  broken = dict(state_dict)
  broken["visual.proj"] = state_dict["visual.proj"].copy()
  broken["visual.proj"][1, 2] = bad
  path = checkpoints.write_state_dict(broken, tmp_path / "broken.safetensors")
  with pytest.raises(ValueError, match=r"broken.safetensors: 1 parameter\(s\) hold NaN or "
                                       r"infinite values:\n  visual/proj \(1 values\)"):
    convert.run(convert_config.get_config(f"src={path},model=hpjax-tiny"), tmp_path / "w")
  assert not (tmp_path / "w" / "params").exists()
  config = eval_hp.get_config(f"models=hpjax-tiny={path},suite_root={tmp_path}/absent")
  with pytest.raises(ValueError, match=r"visual/proj"):
    runner.build(runner.model_specs(config)[0])


def test_a_damaged_newest_step_names_the_intact_ones(source, tmp_path):
  """One line instead of orbax's pages: which step is damaged, and which ones read."""
  from hpjax.checkpoints import orbax_params  # pylint: disable=g-import-not-at-top
  state_dict, _ = source
  params = checkpoints.openclip_to_params(state_dict, get_model_config("hpjax-tiny"))
  steps = tmp_path / "checkpoints"
  for step in (2, 4, 6):
    orbax_params.save_params(steps / str(step), params)
  (steps / "6" / "_METADATA").write_text("{half a json")
  with pytest.raises(ValueError, match=rf"orbax checkpoint {steps / '6'} is damaged \(.*\); "
                                       rf"intact step\(s\) of {steps}: 4, 2: give {steps / '4'}$"):
    convert.run(convert_config.get_config(f"src={steps},model=hpjax-tiny,direction=to_openclip"),
                tmp_path / "w")
  assert not (tmp_path / "w" / "open_clip_model.safetensors").exists()
  done = convert.run(convert_config.get_config(
      f"src={steps / '4'},model=hpjax-tiny,direction=to_openclip"), tmp_path / "w")
  np.testing.assert_array_equal(checkpoints.read_state_dict(done["dst"])["visual.proj"],
                                state_dict["visual.proj"])
