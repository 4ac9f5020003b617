"""The output of a command child as it is read: progress lines and capped captures, split anyhow."""

from __future__ import annotations

from runtime.command_output import CHUNK, OutputCapture, ProgressFilter


def _feed_in_pieces(stream: bytes, cuts: list[int], cap: int = 1 << 20) -> tuple[list[tuple[float, str]], bytes, bool]:
    events: list[tuple[float, str]] = []
    capture = OutputCapture(cap)
    progress = ProgressFilter(capture, lambda f, m: events.append((f, m)))
    start = 0
    for cut in [*cuts, len(stream)]:
        while start < cut:  # never more than a read would ask for
            step = min(cut - start, progress.want())
            progress.add(stream[start:start + step])
            start += step
    progress.close()
    return events, bytes(capture.data), capture.truncated


def test_progress_filter_gives_the_same_result_wherever_the_reads_split() -> None:
    stream = (b"out one\n::progress 0.25 a quarter\n::progress bad\n::progressive 1\nno newline, then "
              b"::progress 0.5 not at a line start\n\n::progress 0.75\n  ::progress 0.9 indented\n::progress 1 end")
    expected = ([(0.25, "a quarter"), (0.75, ""), (1.0, "end")],
                b"out one\n::progress bad\n::progressive 1\nno newline, then ::progress 0.5 not at a line start\n\n"
                b"  ::progress 0.9 indented\n", False)
    assert _feed_in_pieces(stream, []) == expected
    for cut in range(1, len(stream)):
        assert _feed_in_pieces(stream, [cut]) == expected, cut
    assert _feed_in_pieces(stream, list(range(1, len(stream)))) == expected


def test_only_a_line_of_at_most_one_chunk_can_be_progress() -> None:
    chunk = CHUNK
    fits = b"::progress 0.5 " + b"m" * (chunk - 16) + b"\n"
    too_long = b"::progress 0.5 " + b"m" * (chunk - 15) + b"\n"
    assert len(fits) == chunk
    events, data, _ = _feed_in_pieces(fits + too_long + fits, [])
    assert events == [(0.5, "m" * (chunk - 16))] * 2
    assert data == too_long


def test_a_newline_less_flood_holds_at_most_one_chunk() -> None:
    capture = OutputCapture(1000)
    progress = ProgressFilter(capture, lambda f, m: None)
    progress.add(b"::progress 0.5 ")
    for _ in range(200):  # 12.5 MiB, no newline
        progress.add(b"x" * progress.want())
        assert len(progress._held) < CHUNK
        assert len(capture.data) <= 1000
    progress.close()
    assert capture.truncated and bytes(capture.data) == b"::progress 0.5 " + b"x" * 985


def test_the_last_stderr_line_is_found_wherever_the_reads_split() -> None:
    stream = b"warming up\nboom: disk full  \n\n \n"
    for cut in range(len(stream) + 1):
        capture = OutputCapture(5)
        capture.add(stream[:cut])
        capture.add(stream[cut:])
        capture.close()
        assert capture.last_line == b"boom: disk full", cut
    unfinished = OutputCapture(100)
    unfinished.add(b"first\nfatal: no new")
    unfinished.add(b"line at the end")
    unfinished.close()
    assert unfinished.last_line == b"fatal: no newline at the end"
