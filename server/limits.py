"""How much one request may ask of the server, and the queue that keeps a small request from waiting
behind a large one.

Every limit is a serve.py flag. A request over one gets a 400 naming the limit and the flag; a queue that is
full gets a 503 ("busy, try again"); decoding that runs past its time gets a 503 saying so. Nothing a
request asks can make the server allocate without bound or keep it busy for longer than `seconds`.
"""

import threading
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class ServerLimits:
    """What one request may ask for, and how many run at once."""

    max_bytes: int = 5_000_000  # largest upload, in bytes
    max_pixels: int = 40_000_000  # largest image once decoded (a small file can hold a huge picture)
    max_num: int = 8  # most captions per image (sampling)
    max_beam: int = 8  # widest beam search a request may ask for
    max_len: int = 128  # most new tokens per caption (the model's own limit applies too)
    seconds: float = 30.0  # longest a request's decoding may run before it is stopped with a 503
    image_decodes: int = 2  # images decoded at once; each may take its full size in memory for a moment
    waiting: int = 64  # requests that may wait in each lane; one more gets a 503
    large: int = 4  # a request asking for more than this many captions or beams waits in the large lane
    max_connections: int = 256  # connections held open at once (each an open file; the usual limit is 1,024)
    read_timeout: float = 10.0  # seconds a client may take to send a request's head; then it is closed

    def __post_init__(self):
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"the server's {name} must be above 0, not {value}")

    def check(self, options):
        """Refuse, in one sentence naming the flag, DecodingOptions beyond these limits."""
        for name, value, limit, flag in [("num", options.num, self.max_num, "--max-num"),
                                         ("beam", options.beam, self.max_beam, "--max-beam"),
                                         ("max_len", options.max_len or 0, self.max_len, "--max-len")]:
            if value > limit:
                raise ValueError(f"{name} may be at most {limit} on this server, not {value} (serve.py {flag})")

    def is_large(self, options):
        return options.num * options.beam > self.large


class Busy(Exception):
    """A lane's queue is full; the message says to try again."""


class Lanes:
    """Two queues, each serving one request at a time: small requests (the page's default, a beam of 3) in
    one, large ones (many samples, a wide beam) in the other. A small request waits only for other small
    ones, which are quick, so its latency stays low while the largest request allowed runs beside it; large
    requests wait for each other. `waiting` bounds each queue, so no burst holds the server's threads."""

    def __init__(self, limits):
        self.limits = limits
        self.turns = {"small": threading.Lock(), "large": threading.Lock()}
        self.queued = {"small": 0, "large": 0}
        self.count = threading.Lock()  # guards `queued`

    @contextmanager
    def turn(self, options):
        """Wait for this request's lane (a blocking wait: call it from a worker thread), then run."""
        lane = "large" if self.limits.is_large(options) else "small"
        with self.count:
            if self.queued[lane] >= self.limits.waiting:
                raise Busy(f"the server is busy ({self.queued[lane]} {lane} requests waiting); try again shortly")
            self.queued[lane] += 1
        try:
            with self.turns[lane]:
                yield lane
        finally:
            with self.count:
                self.queued[lane] -= 1


def few_memory_arenas(arenas=2):
    """Let glibc's malloc keep at most `arenas` memory pools. By default each thread that allocates gets a
    pool of its own (up to 8 per core), and memory freed there stays with that pool: a server whose worker
    threads each decoded one large image once keeps all of them (measured: 16 uploads of a 6300 x 6300 PNG,
    two decoded at a time, kept +1.5 GB with the default and +0.4 GB with 2; bench/RESULTS.md). Does nothing
    where the C library is not glibc. Call it before the threads start."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): their allocators differ
        pass
