"""Context Diffusion at Stable Diffusion scale: the paper's design on pre-trained CLIP, Stable Diffusion and ControlNet.

``ContextDiffusion`` (model.py) holds the parts and generates; ``train.py`` is the ``sd-train`` command (Accelerate);
``tiny.py`` writes tiny random stand-ins of every part, so all of it runs offline (tests, notebook 10). This subpackage
imports diffusers and transformers; the from-scratch package never does.
"""
from .model import ContextDiffusion, ContextDiffusionConfig, Conditions, TrainingBatch
from .tiny import build_tiny_parts

__all__ = ["ContextDiffusion", "ContextDiffusionConfig", "Conditions", "TrainingBatch", "build_tiny_parts"]
