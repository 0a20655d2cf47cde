"""WebDataset tar shards: listing an input (`listing`), naming each shard's output (`naming`) and reading a
shard's members as a stream (`tarstream`)."""
