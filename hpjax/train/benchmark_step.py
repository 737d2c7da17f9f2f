"""The trainer's step on a stand-in batch, set up as `trainer.run` sets it up, for the benchmark
tools (tools/bench_accumulation.py, tools/bench_accelerator.py): random weights, the paper's
optimizer, a batch of random pixels with texts of varied lengths, hard texts and packing.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from hpjax import factory, sharding
from hpjax import tokenizer as tokenizer_lib
from hpjax.models.config import get_model_config
from hpjax.train import optim, run_config, text_packing, trainer
from hpjax.train import step as step_lib

_WORDS = ("a photo of the red green small large dog cat car bus man woman on in next to with "
          "and two three wooden table street park holding riding near under").split()


def stand_in_batch(model_name: str, batch_size: int, hard_negatives: int, hard_positives: int,
                   seed: int = 0) -> dict:
  """A host batch (unpacked): random pixels, captions and hard texts of 5 to 20 random words."""
  model_cfg = get_model_config(model_name)
  rng = np.random.default_rng(seed)
  tok = tokenizer_lib.get_tokenizer(model_cfg)
  texts = lambda n: tok([" ".join(rng.choice(_WORDS, rng.integers(5, 21))) for _ in range(n)])
  size = model_cfg.vision.image_size
  length = model_cfg.text.context_length
  return {
      "image": rng.normal(size=(batch_size, size, size, 3)).astype(np.float32),
      "caption": texts(batch_size),
      "hard_negatives": texts(batch_size * hard_negatives).reshape(batch_size, hard_negatives,
                                                                   length),
      "hard_positives": texts(batch_size * hard_positives).reshape(batch_size, hard_positives,
                                                                   length),
      "hard_negative_mask": np.ones((batch_size, hard_negatives), bool),
      "hard_positive_mask": np.ones((batch_size, hard_positives), bool)}


@dataclasses.dataclass
class BenchmarkStep:
  """The jitted step (`jit_train_step`), its state and its batch on the mesh."""
  model: object
  state: object
  batch: dict
  step: object

  def run(self) -> float:
    """One step; returns the loss (after waiting for the device)."""
    self.state, metrics = self.step(self.state, self.batch)
    return float(metrics["loss"])

  def _compiled(self):
    return self.step.lower(self.state, self.batch).compile()

  def memory_bytes(self) -> int:
    """The compiled step's peak: its arguments, outputs and temporaries (XLA's analysis)."""
    analysis = self._compiled().memory_analysis()
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes)

  def flops(self) -> float:
    """The FLOPs of one step, as XLA counts them in the compiled program."""
    cost = self._compiled().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def make(model_name: str, batch: dict, optim_config, *, dtype: str = "float32",
         micro_batches: int = 1, kind: str = "contrastive", mesh=None,
         seed: int = 0) -> BenchmarkStep:
  """The step of `model_name` on `batch` (a host batch from `stand_in_batch`), packed as the
  trainer packs it when the text tower allows, with `micro_batches` accumulation and the
  optimizer of `optim_config` (a training config's `optim`)."""
  mesh = mesh or sharding.make_mesh()
  model, params = factory.create_model(trainer.model_config(model_name, kind),
                                       dtype=run_config.DTYPES[dtype], rng=jax.random.key(seed))
  if model.config.text.causal_eot_pooled:
    batch = text_packing.pack_batch(batch, mesh.shape[sharding.DATA] * micro_batches,
                                    model.config.text.context_length)
  tx, schedule = optim.make_optimizer(optim_config, 1000)
  shapes = jax.eval_shape(lambda p: step_lib.init_state(p, tx), params)
  shardings = sharding.param_sharding(mesh, shapes)
  state = jax.jit(lambda p: step_lib.init_state(p, tx), out_shardings=shardings)(params)
  step = step_lib.jit_train_step(model, tx, schedule, shardings, sharding.replicated(mesh),
                                 kind=kind, micro_batches=micro_batches,
                                 data_shards=mesh.shape[sharding.DATA])
  return BenchmarkStep(model, state, sharding.put_batch(batch, mesh), step)
