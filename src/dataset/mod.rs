//! Datasets read from outside: local files (.jsonl, .json, .parquet, .txt) and Hugging Face
//! Hub dataset repos, turned into token ids the way llm-compressor 0.14 preprocesses them.
