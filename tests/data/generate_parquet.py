#!/usr/bin/env python3
"""Writes the Parquet files under tests/data/ the way Hub data sets store them (pyarrow, Snappy or
Zstandard pages, messages as list<struct<role, content>>). Usage: python3 tests/data/generate_parquet.py
(needs pyarrow; nothing here runs at test time)."""

import json
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq

HERE = pathlib.Path(__file__).resolve().parent
HF_META = {b"huggingface": json.dumps({"info": {"features": {}}}).encode()}


def write(table, path, compression="snappy"):
    table = table.replace_schema_metadata(HF_META)
    pq.write_table(table, HERE / path, compression=compression, row_group_size=2)
    print("wrote", path)


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


message = pa.struct([("role", pa.string()), ("content", pa.string())])

write(
    pa.table(
        {
            "prompt": pa.array(
                [msgs(("user", "Hi")), msgs(("system", "Be brief."), ("user", "2+2?")), msgs(("user", "Bonjour ☀"))],
                type=pa.list_(message),
            ),
            "completion": pa.array(
                [msgs(("assistant", "Hello!")), msgs(("assistant", "4")), msgs(("assistant", "Salut !"))],
                type=pa.list_(message),
            ),
            "label": [True, False, True],
        }
    ),
    "valid/unpaired_conversational.parquet",
)
write(
    pa.table(
        {
            "prompt": ["The sky is", "Water boils at", "Paris is in"],
            "chosen": [" blue.", " 100 °C at sea level.", " France."],
            "rejected": [" green.", " 50 °C.", " Spain."],
        }
    ),
    "valid/paired_standard.parquet",
    compression="zstd",
)
write(
    pa.table(
        {
            "prompt_ids": pa.array([[1, 2, 3], [4, 5]], type=pa.list_(pa.int64())),
            "completion_ids": pa.array([[6, 7], [8]], type=pa.list_(pa.int64())),
            "label": [True, False],
        }
    ),
    "valid/pretokenized.parquet",
)
write(
    pa.table({"prompt": ["Hi", "Hey", "Yo"], "completion": ["Hello", "Hi", "Sup"], "label": ["true", "false", "yes"]}),
    "malformed/label_string.parquet",
)
write(
    pa.table({"prompt": ["Hi", None], "completion": ["Hello", "Hi"], "label": [True, False]}),
    "malformed/null_prompt.parquet",
)
write(
    pa.table({"prompt": ["Hi", "Hey"], "label": [True, False]}),
    "malformed/missing_completion.parquet",
)
