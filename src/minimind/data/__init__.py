"""Data: MiniMind's JSONL formats, validation, token caches, packing, batches, downloads.

The trainer needs three names:

    from minimind.data import build_datasets, iterate_batches, attention_mask_from_segments

    train_ds, val_ds = build_datasets(["pretrain.jsonl"], tokenizer, "pretrain", seq_len=512,
                                      val_fraction=0.01)
    for batch in iterate_batches(train_ds, batch_size=32, seed=42, epoch=0):
        mask = attention_mask_from_segments(batch["segment_ids"])
        out = model(batch["input_ids"], attention_mask=mask,
                    position_ids=batch["position_ids"], labels=batch["labels"])

See docs/data.md for the formats, the cache, packing and `minimind data check/download`.
"""

from .batches import attention_mask_from_segments, batches_per_epoch, epoch_order, iterate_batches
from .cache import TokenizedFile, default_cache_dir, tokenize_file
from .datasets import build_datasets, split_documents
from .formats import KINDS, BadRecords, Record, read_records
from .packing import PackedDataset, best_fit_decreasing
from .sft import AssistantMasker, ChatRenderer, encode_chats

__all__ = [
    "build_datasets", "iterate_batches", "attention_mask_from_segments", "batches_per_epoch", "epoch_order",
    "PackedDataset", "TokenizedFile", "tokenize_file", "default_cache_dir", "split_documents",
    "read_records", "Record", "BadRecords", "KINDS", "encode_chats", "ChatRenderer", "AssistantMasker",
    "best_fit_decreasing",
]
