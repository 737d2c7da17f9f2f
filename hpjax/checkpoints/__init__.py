"""Checkpoint conversion: OpenCLIP / OpenAI / HF files <-> Flax params, and orbax param dirs."""
from hpjax.checkpoints.files import read_state_dict, write_state_dict
from hpjax.checkpoints.loading import (check_params, export_hf, export_openclip, is_hf_folder,
                                       load_hf, load_openai, load_params)
from hpjax.checkpoints.lora import merge_lora
from hpjax.checkpoints.mapping import (CheckpointMismatchError, openclip_to_params,
                                       params_to_openclip)
from hpjax.checkpoints.orbax_params import restore_params, save_params
