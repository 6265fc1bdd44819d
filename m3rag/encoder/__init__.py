"""The BGE-M3 encoder (torch and transformers are imported when a model is loaded)."""

from __future__ import annotations

from m3rag.encoder.m3 import M3Encoder, PairScores
from m3rag.encoder.protocol import Encoder

__all__ = ["Encoder", "M3Encoder", "PairScores"]
