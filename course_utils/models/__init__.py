"""The course's own Transformer models (chapter 4, The Transformer).

``gpt``: decoder-only GPT (GPT-2 compatible); ``bert``: encoder-only BERT with MLM,
sequence- and token-classification heads; ``seq2seq``: a small encoder-decoder Transformer; ``llama``: a Llama-family decoder (chapter 11).
All save and load with ``save_pretrained(dir)`` / ``Cls.from_pretrained(dir)`` (``io``).
"""
from __future__ import annotations

from .bert import (BertConfig, BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification,
                   BertModel, mask_tokens)
from .gpt import GPT, GPTConfig, GPTOutput
from .llama import LlamaConfig, LlamaForCausalLM, LlamaOutput
from .seq2seq import Seq2SeqConfig, Seq2SeqTransformer

__all__ = ["GPT", "GPTConfig", "GPTOutput", "BertConfig", "BertModel", "BertForMaskedLM",
           "BertForSequenceClassification", "BertForTokenClassification", "mask_tokens",
           "Seq2SeqConfig", "Seq2SeqTransformer", "LlamaConfig", "LlamaForCausalLM", "LlamaOutput"]
