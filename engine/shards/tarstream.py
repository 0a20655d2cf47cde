"""Tar streams as real corpora hold them: compressed or not (told by their magic bytes, never by the
file name), several archives concatenated, hard links, special members, and every way the bytes can
end early or be damaged, each reported instead of taken for a clean end."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

BLOCK = tarfile.BLOCKSIZE
ZERO_BLOCK = bytes(BLOCK)

# The damage statuses this module reports; `dpiqa.engine.schema` gives them to rows.
TRUNCATED = "truncated_tar"
CORRUPT = "corrupt_archive"


class NotATarError(Exception):
    """The bytes are no tar archive at all (nothing of them could be read as one): the shard fails."""


@dataclass
class Member:
    """One member of the archive.

    Args:
        name: the name as stored; bytes that are not UTF-8 are kept as surrogate escapes (`shown()`
            turns them into `\\xNN` for messages and keys), so writing the name back restores its bytes.
        data: the member's bytes (a hard link's are its target's); None for a special member.
        note: what a special member is (`symbolic link to 'x.jpg'`), or why a hard link has no bytes.
    """

    name: str
    data: bytes | None
    note: str | None = None


@dataclass
class Damage:
    """How the stream went wrong, yielded after the last good member; nothing follows it.

    Args:
        status: `truncated_tar` (the bytes end inside a member, a header, or before the end-of-archive
            block) or `corrupt_archive` (a compressed stream fails its checksum or is undecodable, or
            bytes that are no tar header follow the end of the archive).
        message: what happened, naming the member or the byte offset.
        name: the member being read when it happened, if any.
    """

    status: str
    message: str
    name: str | None = None


def shown(name: str) -> str:
    """A member name as valid UTF-8 text: bytes that are not UTF-8 become `\\xNN` escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# -- compression, by magic bytes --------------------------------------------------------------------

_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))
_NOT_TAR_MAGIC = (
    (b"PK\x03\x04", "a zip archive"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"%PDF", "a PDF document"),
    (b"PAR1", "a Parquet file"),
    (b"\x04\x22\x4d\x18", "an LZ4 stream"),
)


def compression_of(head: bytes) -> str | None:
    """`gzip`, `bzip2`, `xz` or `zstd` from a stream's first bytes; None for anything else."""
    return next((codec for magic, codec in _MAGIC if head.startswith(magic)), None)


class _StreamError(Exception):
    """Raised by `_Decompressed` for a fault of the compressed data (never for one of the source)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Source(io.RawIOBase):
    """The caller's file object, remembering the last exception it raised: an I/O failure of the
    source (a dropped connection after its retries) is the caller's to handle, not a damaged stream."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self.raw = raw
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # buffer protocol
        try:
            data = self.raw.read(len(b))
        except BaseException as exc:
            self.error = exc
            raise
        b[: len(data)] = data
        return len(data)


class _ZstdReader(io.RawIOBase):
    """zstd frames one after another, with the check that `zstandard`'s stream reader skips: a stream
    that ends inside a frame is an error here, not a clean end."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        import zstandard

        self.raw, self.zstd = raw, zstandard
        self.dobj = zstandard.ZstdDecompressor().decompressobj()
        self.pending = b""
        self.started = False  # a frame has begun and not ended

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # buffer protocol
        while not self.pending:
            chunk = self.raw.read(1 << 16)
            if not chunk:
                if self.started and not self.dobj.eof:
                    raise EOFError("zstd stream ends inside a frame")
                return 0
            while chunk:
                self.started = True
                self.pending += self.dobj.decompress(chunk)
                chunk = b""
                if self.dobj.eof:
                    chunk = self.dobj.unused_data
                    self.dobj = self.zstd.ZstdDecompressor().decompressobj()
                    self.started = bool(chunk)
        n = min(len(b), len(self.pending))
        b[:n], self.pending = self.pending[:n], self.pending[n:]
        return n


class _Decompressed(io.RawIOBase):
    """A decompressing reader that turns the codec's own errors into `_StreamError`s: the stream ending
    before its end-of-stream marker is truncation, a failed checksum or undecodable data is corruption.
    Reading it to its end is what makes a gzip stream check its CRC and length."""

    def __init__(self, codec: str, raw: BinaryIO, source: _Source) -> None:
        super().__init__()
        self.codec, self.source = codec, source
        if codec == "gzip":
            self.inner: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb")
        elif codec == "bzip2":
            self.inner = bz2.BZ2File(raw)
        elif codec == "xz":
            self.inner = lzma.LZMAFile(raw)
        else:
            self.inner = _ZstdReader(raw)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # buffer protocol
        try:
            # read1: what one read of the compressed data gives. read() would gather the whole request
            # and lose all of it when the stream breaks part-way.
            data = self.inner.read1(len(b)) if hasattr(self.inner, "read1") else self.inner.read(len(b))
        except Exception as exc:
            if self.source.error is not None and (exc is self.source.error or exc.__context__ is self.source.error):
                raise  # the source failed, not the compressed data
            if isinstance(exc, EOFError):
                raise _StreamError(
                    TRUNCATED, f"the {self.codec} stream ends before its end-of-stream marker (the file is cut short)"
                ) from exc
            raise _StreamError(CORRUPT, f"the {self.codec} stream is corrupt: {exc}") from exc
        b[: len(data)] = data
        return len(data)


# -- positions ----------------------------------------------------------------------------------------


class _Tape(io.RawIOBase):
    """A forward reader that knows absolute positions and keeps recent bytes, so that after tarfile's
    stream mode stops we can look at the block where it stopped (a proper end-of-archive block, or a
    truncated or corrupt header, which tarfile takes silently for an end), restart it there for a
    concatenated archive, and copy a hard link's target if its bytes are still held."""

    def __init__(self, raw: BinaryIO, keep: int = 1 << 17) -> None:
        super().__init__()
        self.raw, self.keep = raw, keep
        self.buf = bytearray()
        self.start = 0  # absolute position of buf[0]
        self.pos = 0  # absolute position of the next byte handed out
        self.eof = False

    def readable(self) -> bool:
        return True

    def _fill(self, end: int) -> None:
        while self.start + len(self.buf) < end and not self.eof:
            chunk = self.raw.read(max(end - self.start - len(self.buf), 1 << 16))
            if not chunk:
                self.eof = True
            self.buf += chunk

    def readinto(self, b) -> int:  # buffer protocol
        self._fill(self.pos + len(b))
        at = self.pos - self.start
        data = self.buf[at : at + len(b)]
        b[: len(data)] = data
        self.pos += len(data)
        drop = self.pos - self.keep - self.start
        if drop > self.keep:  # trimmed in large steps: deleting from a bytearray's front moves the rest
            del self.buf[:drop]
            self.start += drop
        return len(data)

    def held(self, offset: int, size: int) -> bytes | None:
        """The bytes at `[offset, offset + size)` if they are still held, else None."""
        if offset < self.start or offset + size > self.start + len(self.buf):
            return None
        return bytes(self.buf[offset - self.start : offset - self.start + size])

    def seek_to(self, offset: int) -> None:
        if offset < self.start:
            raise AssertionError(f"offset {offset} scrolled away (kept from {self.start})")
        self.pos = offset

    def read_block(self, offset: int) -> bytes:
        """The (up to) 512 bytes at `offset`; the position moves past them."""
        self.seek_to(offset)
        return self.read(BLOCK)


def is_header(block: bytes) -> bool:
    """Whether a 512-byte block is a tar header whose checksum holds."""
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def _what_it_is(head: bytes, codec: str | None) -> str:
    inside = f" inside its {codec} compression" if codec else ""
    known = next((what for magic, what in _NOT_TAR_MAGIC if head.startswith(magic)), None)
    if known:
        return f"not a tar archive: it is {known}{inside}"
    return f"not a tar archive: its first 512 bytes{inside} are no tar header"


# -- members ---------------------------------------------------------------------------------------


def iter_members(fileobj: BinaryIO, reopen: Callable[[], BinaryIO] | None = None) -> Iterator[Member | Damage]:
    """Yield every file-like member of a tar stream in order, then a `Damage` if the stream is not whole.

    Compression (gzip, bzip2, xz, zstd) is told by the magic bytes, whatever the name says, and the
    compressed stream is read to its end so that its checksum is checked. Archives concatenated one
    after the other are read on (as `tar --ignore-zeros` does). Directories are skipped; a hard link
    yields its own name with its target's bytes (from the bytes still held, else read again through
    `reopen`); symbolic links, FIFOs and devices yield `Member(data=None, note=...)`.

    Args:
        fileobj: the stream, read once from its start.
        reopen: opens the same bytes again from the start (for a hard link whose target has scrolled
            away); without it such a link gets a note instead of bytes.

    Raises:
        NotATarError: the bytes are no tar archive (nothing was yielded).
    """
    source = _Source(fileobj)
    buffered = io.BufferedReader(source, buffer_size=1 << 20)
    codec = compression_of(buffered.peek(8)[:8])
    tape = _Tape(_Decompressed(codec, buffered, source) if codec else buffered)
    try:
        first = tape.read_block(0)
    except _StreamError as exc:
        raise NotATarError(f"{exc}; nothing could be read as a tar") from None
    if not first:
        raise NotATarError(f"empty {codec} stream" if codec else "empty file (0 bytes), not a tar archive")
    if len(first) < BLOCK:
        raise NotATarError(
            f"{len(first)} bytes{' after ' + codec + ' decompression' if codec else ''}: too short for a tar archive"
        )
    if first != ZERO_BLOCK and not is_header(first):
        raise NotATarError(_what_it_is(first, codec))
    yield from _Archives(tape, codec, reopen).members()


class _Archives:
    """The member walk of `iter_members`: one tarfile stream per archive, the damage checks between."""

    def __init__(self, tape: _Tape, codec: str | None, reopen: Callable[[], BinaryIO] | None) -> None:
        self.tape, self.codec, self.reopen = tape, codec, reopen
        self.regular: dict[str, tuple[int, int]] = {}  # name -> (absolute data offset, size), for hard links

    def members(self) -> Iterator[Member | Damage]:
        base = 0
        while True:
            end = yield from self._one_archive(base)
            if isinstance(end, Damage):
                yield end
                return
            nxt = yield from self._after_end(end)
            if nxt is None:
                return
            base = nxt

    def _one_archive(self, base: int) -> Iterator[Member | Damage]:
        """Members of the archive starting at `base`; returns the absolute offset where tarfile stopped
        (the end-of-archive block if the archive is whole) or a `Damage`."""
        tape = self.tape
        tape.seek_to(base)
        reading: str | None = None
        try:
            stream = tarfile.open(fileobj=tape, mode="r|", encoding="utf-8", errors="surrogateescape")
            for info in stream:
                stream.members = []  # tarfile keeps every TarInfo in stream mode; a shard can be huge
                if info.isdir():
                    continue
                if info.isreg():
                    reading = info.name
                    data = stream.extractfile(info).read()
                    reading = None
                    self.regular[info.name] = (base + info.offset_data, len(data))
                    yield Member(info.name, data)
                elif info.islnk():
                    yield self._hard_link(info)
                else:
                    yield Member(info.name, None, note=_special(info))
            stopped = base + stream.offset
        except _StreamError as exc:
            where = f" (while reading member {shown(reading)!r})" if reading else ""
            return Damage(exc.status, f"{exc}{where}", reading)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            if reading is not None:
                return Damage(TRUNCATED, f"tar ends inside member {shown(reading)!r}: {exc}", reading)
            return Damage(TRUNCATED, f"unreadable tar header after byte {tape.pos}: {exc}")
        try:
            block = tape.read_block(stopped)
        except _StreamError as exc:
            return Damage(exc.status, str(exc))
        if len(block) < BLOCK:
            what = "no end-of-archive block" if not block else "a truncated header"
            return Damage(TRUNCATED, f"tar stops after byte {stopped}: {what}")
        if block != ZERO_BLOCK:
            return Damage(TRUNCATED, f"tar stops after byte {stopped}: a truncated or corrupt header")
        return stopped + BLOCK

    def _after_end(self, offset: int) -> Iterator[Damage]:
        """Past an end-of-archive block: zero padding to the end of the stream (read to its end, so a
        compressed stream's checksum is checked), or the next of concatenated archives, whose offset is
        returned; None at the end. Yields a `Damage` for bytes that are neither."""
        while True:
            try:
                block = self.tape.read_block(offset)
            except _StreamError as exc:
                yield Damage(exc.status, str(exc))
                return None
            if not block or block == bytes(len(block)):
                if len(block) < BLOCK:
                    return None
                offset += BLOCK
                continue
            if len(block) == BLOCK and is_header(block):
                return offset
            yield Damage(CORRUPT, f"bytes that are no tar header follow the end of the archive at byte {offset}")
            return None

    def _hard_link(self, info: tarfile.TarInfo) -> Member:
        target = self.regular.get(info.linkname)
        if target is None:
            return Member(
                info.name, None, note=f"hard link to {shown(info.linkname)!r}, which is no file earlier in this tar"
            )
        self.regular[info.name] = target
        offset, size = target
        data = self.tape.held(offset, size)
        if data is None:
            if self.reopen is None:
                return Member(
                    info.name,
                    None,
                    note=f"hard link to {shown(info.linkname)!r}, whose bytes cannot be read again from this stream",
                )
            data = self._read_again(offset, size)
        return Member(info.name, data)

    def _read_again(self, offset: int, size: int) -> bytes:
        """`size` bytes at `offset` of the (decompressed) archive, read through a fresh stream."""
        with self.reopen() as raw:
            if self.codec is None and getattr(raw, "seekable", lambda: False)():
                raw.seek(offset)
                stream: BinaryIO = raw
            else:
                source = _Source(raw)
                stream = _Decompressed(self.codec, io.BufferedReader(source), source) if self.codec else source
                skip = offset
                while skip:
                    got = stream.read(min(skip, 1 << 20))
                    if not got:
                        break
                    skip -= len(got)
            data = bytearray()
            while len(data) < size:
                got = stream.read(size - len(data))
                if not got:
                    break
                data += got
        return bytes(data)


def _special(info: tarfile.TarInfo) -> str:
    if info.issym():
        return f"symbolic link to {shown(info.linkname)!r} (links are not followed)"
    if info.isfifo():
        return "a FIFO, not a file"
    if info.ischr():
        return "a character device, not a file"
    if info.isblk():
        return "a block device, not a file"
    return f"a tar member of type {info.type!r}, not a file"
