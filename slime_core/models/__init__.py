"""Model building blocks. Modules are imported explicitly (no directory scanning); importing
them fills slime_core.models.registry."""
from slime_core.models import registry
from slime_core.models.connectors import GatedAdapters, build_connector
from slime_core.models.llm import Decoder, DecoderConfig
from slime_core.models.resampler import Resampler
from slime_core.models.slime import SlimeConfig, SlimeModel
from slime_core.models.vision import VisionConfig, VisionTower

__all__ = ["Decoder", "DecoderConfig", "GatedAdapters", "Resampler", "SlimeConfig", "SlimeModel",
           "build_connector", "VisionConfig", "VisionTower", "registry"]
