"""Model references: built-in offline packs, local folders, GGUF files and hub ids."""

from tailorlm.models.generate import generate
from tailorlm.models.hub import list_models, pull, resolve, tailorlm_home
from tailorlm.models.info import ModelInfo, format_info, model_info
from tailorlm.models.load import load_model, load_tokenizer

__all__ = [
    "ModelInfo",
    "format_info",
    "generate",
    "list_models",
    "load_model",
    "load_tokenizer",
    "model_info",
    "pull",
    "resolve",
    "tailorlm_home",
]
