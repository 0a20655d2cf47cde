"""Resume at scale decides done from a listing of the markers, not from reading them: over 1,000 markers on the
loopback S3 server (several pages, several leading characters), the shards without a marker are exactly the
ones left to do."""

from __future__ import annotations

import json
import random

import fsspec

from dpiqa.engine.output import DONE_DIR, OutputLocation
from dpiqa.engine.runner import pending_shards
from dpiqa.engine.shards.listing import list_shards


def test_resume_over_1100_s3_markers_finds_exactly_the_shards_without_one(s3):
    bucket, options = s3
    fs = fsspec.filesystem("s3", **options)
    names = [f"{i:05d}" for i in range(1100)] + ["zeta", "Alpha", "~tilde", "é-accent", " space"]
    fs.pipe({f"{bucket}/in/{n}.tar": b"" for n in names})  # listing needs names only
    shards = list_shards(f"s3://{bucket}/in/", options)
    assert len(shards.urls) == len(names)

    out = OutputLocation(f"s3://{bucket}/out", options)
    out.claim({"model": "test"})
    rng = random.Random(7)
    done = set(rng.sample(sorted(shards.urls), 700))
    by_name = {shards.names[u]: u for u in done}
    recorded = dict(list(by_name.items())[:300])  # as a run that recorded its markers; the rest only as files
    fs.pipe(
        {f"{bucket}/out/{DONE_DIR}/{n}.json": json.dumps({"shard": u, "rows": 1}).encode() for n, u in by_name.items()}
    )
    out.record_markers("20261207T000000Z-aaaaaa", 0, [(n, {"shard": u, "rows": 1}) for n, u in recorded.items()])

    assert out.done_names() == set(by_name)  # every page and leading character listed
    todo, skipped = pending_shards(out, shards)
    assert skipped == 700 and sorted(todo) == sorted(set(shards.urls) - done)

    # The 400 markers no record held were read once and recorded: the next resume reads none.
    reads = []
    original = OutputLocation._read_markers
    OutputLocation._read_markers = lambda self, n: reads.append(len(n)) or original(self, n)
    try:
        again, skipped_again = pending_shards(OutputLocation(f"s3://{bucket}/out", options), shards)
    finally:
        OutputLocation._read_markers = original
    assert reads == [] and skipped_again == 700 and sorted(again) == sorted(todo)


def test_a_marker_removed_since_it_was_recorded_is_not_done(tmp_path):
    out = OutputLocation(str(tmp_path / "out"))
    out.claim({"model": "test"})
    out.write_marker("a", {"shard": "/in/a.tar"})
    out.write_marker("b", {"shard": "/in/b.tar"})
    out.record_markers("20261207T000000Z-aaaaaa", 0, [("a", {"shard": "/in/a.tar"}), ("b", {"shard": "/in/b.tar"})])
    (tmp_path / "out" / DONE_DIR / "b.json").unlink()  # the listing decides: b is not done
    assert out.done_urls() == {"a": "/in/a.tar"}
    assert set(out.done()) == {"a"}
