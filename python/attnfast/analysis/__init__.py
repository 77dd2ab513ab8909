"""Analyses of full-attention captures (the questions of seed 003): per-sentence attention over
generation steps, heatmaps, KV-cache eviction replay, and pruning simulation."""

from __future__ import annotations

from attnfast.analysis.eviction import POLICIES, EvictionReplay, replay_eviction, replay_rows
from attnfast.analysis.heatmap import downsample, save_heatmap
from attnfast.analysis.sentences import SentenceAttention, prompt_attention, sentence_attention

__all__ = [
    "POLICIES",
    "EvictionReplay",
    "SentenceAttention",
    "downsample",
    "prompt_attention",
    "replay_eviction",
    "replay_rows",
    "save_heatmap",
    "sentence_attention",
]
