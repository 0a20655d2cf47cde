"""Pipeline stages: read shards, decode images, score them, write Parquet."""
