"""A ``command`` child's output as it is read: capped captures and progress lines.

Plain byte handling, no processes: ``CommandExecution`` feeds these whatever each
read of a pipe returned, so a line may arrive in several pieces.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["CHUNK", "OutputCapture", "ProgressFilter"]

#: Longest piece read at once, so a newline-less stream cannot eat memory; also the
#: longest line (newline included) that can be a progress line.
CHUNK = 64 * 1024

_PROGRESS = b"::progress"
_LINE_TAIL = 1024  # bytes of an unfinished line kept, to know the last line of a stream


def _parse_progress(line: bytes) -> tuple[float, str] | None:
    """``(fraction, message)`` for a well-formed ``::progress <fraction> [message]`` line, else ``None``."""
    parts = line.decode("utf-8", "replace").strip().split(None, 2)
    if len(parts) < 2 or parts[0] != _PROGRESS.decode():
        return None
    try:
        fraction = float(parts[1])
    except ValueError:
        return None
    return (fraction, parts[2] if len(parts) == 3 else "") if math.isfinite(fraction) else None


class OutputCapture:
    """One stream's output, kept up to a cap; remembers the last non-blank line.

    Pieces are whatever a read returned: a line may span several of them.

    Attributes:
        data: the output kept, at most ``cap`` bytes.
        truncated: more came than ``cap``; the rest was read and discarded.
        last_line: the last non-blank line (its last 200 bytes), e.g. for an error message.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.truncated = False
        self.last_line = b""
        self._open_line = b""  # the end of the line no newline has finished yet

    def add(self, piece: bytes) -> None:
        """Take what one read returned."""
        end = piece.rfind(b"\n")
        if end < 0:
            self._open_line = (self._open_line + piece)[-_LINE_TAIL:]
        else:
            finished = (self._open_line + piece[:end]).rstrip()
            if finished:
                self.last_line = finished[finished.rfind(b"\n") + 1:].strip()[-200:]
            self._open_line = piece[end + 1:][-_LINE_TAIL:]
        room = max(self.cap - len(self.data), 0)
        if len(piece) > room:
            self.truncated = True
            piece = piece[:room]
        self.data += piece

    def want(self) -> int:
        """Bytes the next read may ask for."""
        return CHUNK

    def close(self) -> None:
        """The stream ended: a last line without a newline counts too."""
        if self._open_line.strip():
            self.last_line = self._open_line.strip()[-200:]
        self._open_line = b""

    def text(self) -> str:
        """The output kept, decoded (undecodable bytes replaced)."""
        return self.data.decode("utf-8", "replace")


class ProgressFilter:
    """Stdout as it is read: progress lines become events, everything else goes to the capture.

    Only a whole line of at most ``CHUNK`` bytes (newline included) can be a
    progress line. The start of a line that may still become one is held back
    until its newline arrives; ``want()`` sizes the next read so that what is held
    plus what is read never exceeds one chunk, whatever the child writes.
    """

    def __init__(self, sink: OutputCapture, report: Callable[[float, str], None]) -> None:
        self._sink = sink
        self._report = report
        self._held = b""
        self._in_output_line = False  # the start of the current line went to the capture

    def want(self) -> int:
        """Bytes the next read may ask for: what is held plus what is read fits in one chunk."""
        return CHUNK - len(self._held)

    def add(self, data: bytes) -> None:
        """Take what one read returned: report the progress lines it completes, pass on the rest."""
        if self._held:
            data, self._held = self._held + data, b""
        size, pos = len(data), 0
        if self._in_output_line:
            newline = data.find(b"\n")
            if newline < 0:
                self._sink.add(data)
                return
            pos = newline + 1
            self._in_output_line = False
        passed = 0  # data[:passed] is dealt with
        end = size  # data[end:] is held back
        while pos < size:
            newline = data.find(b"\n", pos)
            if newline < 0:
                if size - pos < CHUNK and _PROGRESS.startswith(data[pos:pos + len(_PROGRESS)]):
                    self._held, end = data[pos:], pos
                else:
                    self._in_output_line = True
                break
            if newline + 1 - pos <= CHUNK and data.startswith(_PROGRESS, pos):
                event = _parse_progress(data[pos:newline + 1])
                if event is not None:
                    if passed < pos:
                        self._sink.add(data[passed:pos])
                    self._report(*event)
                    passed = newline + 1
            pos = newline + 1
        if passed < end:
            self._sink.add(data[passed:end])

    def close(self) -> None:
        """The stream ended: a held line without a newline is whole now."""
        held, self._held = self._held, b""
        event = _parse_progress(held) if held.startswith(_PROGRESS) else None
        if event is not None:
            self._report(*event)
        elif held:
            self._sink.add(held)
        self._sink.close()
