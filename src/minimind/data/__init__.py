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

from importlib import import_module

# Imported on first use (PEP 562): `minimind data download` and the CLI's parsers import
# submodules of this package and should not pay for torch.
_WHERE = {
    "attention_mask_from_segments": ".batches",
    "batches_per_epoch": ".batches",
    "epoch_order": ".batches",
    "iterate_batches": ".batches",
    "TokenizedFile": ".cache",
    "default_cache_dir": ".cache",
    "tokenize_file": ".cache",
    "build_datasets": ".datasets",
    "split_documents": ".datasets",
    "KINDS": ".formats",
    "BadRecords": ".formats",
    "Record": ".formats",
    "read_records": ".formats",
    "PackedDataset": ".packing",
    "best_fit_decreasing": ".packing",
    "AssistantMasker": ".sft",
    "ChatRenderer": ".sft",
    "encode_chats": ".sft",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module 'minimind.data' has no attribute {name!r}")


__all__ = [
    "build_datasets",
    "iterate_batches",
    "attention_mask_from_segments",
    "batches_per_epoch",
    "epoch_order",
    "PackedDataset",
    "TokenizedFile",
    "tokenize_file",
    "default_cache_dir",
    "split_documents",
    "read_records",
    "Record",
    "BadRecords",
    "KINDS",
    "encode_chats",
    "ChatRenderer",
    "AssistantMasker",
    "best_fit_decreasing",
]
