# The compiled module's interface (speedups.c), for mypy.

from typing import Any

def plain_lines(chunk: bytes | bytearray, pos: int, end: int, chain: bytes, seq: int,
                head: bytes, stop_seq: int, key: bytes | None, needles: tuple[bytes, ...],
                leaves: list[bytes], matched: list[bytes] | None, /
                ) -> tuple[int, int, bytes, bool]: ...

def extend_peaks(peaks: list[bytes], size: int, leaves: list[bytes], /) -> int: ...

def csv_rows(rows: list[tuple[Any, ...]], /) -> str | None: ...
