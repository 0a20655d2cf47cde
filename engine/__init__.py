"""The DP-IQA scoring engine: shard reader, decoder, scorer and Parquet writer on Ray Data."""
