"""Transient object-store errors: which errors are retried, a stream reopened at its offset after a dropped
connection, and Ray's system errors told apart from our own (what makes a pipeline attempt worth retrying)."""

from __future__ import annotations

import errno
import http.client
import io
import os

import aiohttp
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from dpiqa.storage import RETRIES, RetryingReader, is_transient


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (FileNotFoundError("gone"), False),
        (PermissionError("no"), False),
        (IsADirectoryError("dir"), False),
        (OSError(errno.ENOENT, "no such key"), False),
        (OSError(errno.EACCES, "denied"), False),
        (ValueError("a bug"), False),
        (KeyError("key"), False),
        (ConnectionResetError("reset"), True),
        (TimeoutError("slow"), True),
        (OSError(errno.EBUSY, "SlowDown"), True),
        (OSError("503 Service Unavailable"), True),
        # a connection dropped in the middle of a response body, as aiohttp (s3fs) and http.client report it
        (aiohttp.ClientPayloadError("Response payload is not completed"), True),
        (aiohttp.ServerDisconnectedError(), True),
        (http.client.IncompleteRead(b"partial", 1000), True),
        (aiohttp.InvalidURL("not a url"), False),
    ],
)
def test_which_errors_are_transient(exc, transient):
    assert is_transient(exc) is transient


class DroppingFile(io.RawIOBase):
    """A file that drops the connection once it has delivered `drop_at` bytes, as a broken S3 stream does."""

    def __init__(self, inner, drop_at: int) -> None:
        super().__init__()
        self.inner, self.drop_at = inner, drop_at

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.inner.seek(offset, whence)

    def tell(self) -> int:
        return self.inner.tell()

    def readinto(self, b) -> int:
        if self.inner.tell() >= self.drop_at:
            raise ConnectionResetError("connection reset by peer")
        data = self.inner.read(min(len(b), self.drop_at - self.inner.tell()))
        b[: len(data)] = data
        return len(data)


class DroppingFS(MemoryFileSystem):
    """A memory filesystem whose first opened file drops the connection after 300,000 bytes."""

    protocol = "dropping"
    opens: list[int] = []

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode, **kwargs)
        DroppingFS.opens.append(1)
        return f if len(DroppingFS.opens) > 1 else DroppingFile(f, 300_000)


def test_a_dropped_stream_is_reopened_at_its_offset_and_counted():
    data = os.urandom(1_000_000)
    fs = DroppingFS()
    fs.pipe("/bucket/shard.tar", data)
    DroppingFS.opens = []
    RETRIES.take()
    with RetryingReader(fs, "/bucket/shard.tar", block_size=1 << 16) as reader:
        got = b"".join(iter(lambda: reader.read(70_000), b""))
    assert got == data  # the same bytes, none twice, none lost
    assert len(DroppingFS.opens) == 2 and RETRIES.take() == 1


def test_ray_system_errors_are_retryable_and_our_own_errors_are_not():
    import ray.exceptions

    from dpiqa.engine.executor.ray_data import is_ray_system_error

    ours = ray.exceptions.RayTaskError("map_batches", "Traceback ...", ValueError("a bug in a stage"))
    node = ray.exceptions.RayTaskError("map_batches", "Traceback ...", ray.exceptions.NodeDiedError("node gone"))
    actor = ray.exceptions.RayTaskError("map_batches", "Traceback ...", ray.exceptions.ActorDiedError())
    assert is_ray_system_error(ray.exceptions.ActorDiedError())
    assert is_ray_system_error(ray.exceptions.ObjectLostError("ab" * 14, "owner", "call site"))
    assert is_ray_system_error(actor) and is_ray_system_error(node)
    assert not is_ray_system_error(ours)
    assert not is_ray_system_error(ValueError("not Ray's"))
    nested = ray.exceptions.RayTaskError("write", "Traceback ...", ours)  # a task error wrapping a task error
    assert not is_ray_system_error(nested)
