"""Flax CLIP towers and their configs."""
from hpjax.models.clip import CLIP, init_params, num_params, param_shapes
from hpjax.models.config import (CLIPConfig, TextConfig, VisionConfig, get_model_config,
                                 infer_openai_config, list_models)
