"""Many image files preprocessed at once: a pool of worker processes, the results in the files' order.

Preprocessing (decode, paper, ink, frame) is Python and NumPy work that holds one core per image, so a
folder of photos goes as fast as the cores allow only when each core takes its own files. The workers
are forked from a fresh ``forkserver`` process that has imported only the preprocessing modules, or
spawned where there is none (never forked from the caller: it may hold BLAS and PyTorch threads a forked
child would inherit in an unknown state); none imports the model or PyTorch.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import statistics
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import MnistCnnError

if TYPE_CHECKING:
    import numpy as np

    from .decode import ImageLimits

POOL_MIN_FILES = 500  # below this many files a pool's start (about a second per worker) costs more than it saves
CHUNK = 16  # files handed to a worker at a time
SAMPLE, SMALL_FILE = 50, 4096  # the median size of the first 50 files under 4 KB: MNIST-sized images, no pool


def available_cores() -> int:
    """The CPU cores this process may run on (fewer than the machine's inside a container or with taskset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(paths: list[Path]) -> int:
    """One worker per core this process may use; none (work in this process) for a few files, or for small
    ones (28x28 PNGs take a fraction of a millisecond each: handing them to workers costs more)."""
    if len(paths) < POOL_MIN_FILES or statistics.median(_sizes(paths[:SAMPLE])) < SMALL_FILE:
        return 0
    cores = available_cores()
    return cores if cores > 1 else 0


def _sizes(paths: list[Path]) -> list[int]:
    sizes = []
    for path in paths:
        try:
            sizes.append(path.stat().st_size)
        except OSError:  # reported with the file's row
            sizes.append(0)
    return sizes


def frame_or_error(path: Path) -> np.ndarray | MnistCnnError:
    """The MNIST frame of one file, or the user error that says why there is none (returned, not raised,
    so one bad file in a worker neither stops the others nor loses its message)."""
    from .preprocess import preprocess_image  # here, so the CLI can name this module's settings before any work

    try:
        return preprocess_image(path).array
    except MnistCnnError as exc:
        return _without_frames(exc)


@contextmanager
def framing(paths: list[Path], workers: int) -> Iterator[Iterator[tuple[Path, np.ndarray | MnistCnnError]]]:
    """Start preprocessing ``paths`` and give (path, frame or error) for each, in order; ``workers`` 0 or 1
    works in this process, as the iterator is read.

    A pool's workers start at once, beside what the caller does meanwhile (``predict`` loads the model:
    about a second of one core; on 2 cores, all busy either way, that gains no measurable time). Leaving
    the block early cancels the files not yet begun, so an error (a damaged model folder) is reported
    without waiting for them.
    """
    if workers <= 1:
        yield ((path, frame_or_error(path)) for path in paths)
        return
    pool = ProcessPoolExecutor(min(workers, len(paths)), mp_context=_context())
    try:
        with _main_script_hidden():  # map() submits every chunk at once: the workers start here
            answers = pool.map(frame_or_error, paths, chunksize=CHUNK)
        yield zip(paths, answers, strict=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def upload_frame(data: bytes, limits: ImageLimits, name: str) -> np.ndarray:
    """An uploaded image file of one digit (``data``, called ``name`` in messages) as its (28, 28) float32 frame
    in 0-1; the preprocessing's errors as they are, without their tracebacks. What a server's decoding processes
    run: like everything here, it imports neither PyTorch nor the service (the arguments too unpickle without them)."""
    import numpy as np

    from .preprocess import preprocess_image

    file = io.BytesIO(data)
    file.name = name
    try:
        return preprocess_image(file, limits=limits).array.astype(np.float32) / np.float32(255)
    except MnistCnnError as exc:
        raise _without_frames(exc) from None


def _without_frames(exc: MnistCnnError) -> MnistCnnError:
    """``exc`` without its traceback and the exceptions chained to it: their frames hold the decoded image (250 MB
    for 16 MP) for as long as the error lives. Its message and fields stay, and survive pickling."""
    exc.__cause__ = exc.__context__ = None
    return exc.with_traceback(None)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` processes for preprocessing (as :func:`framing`'s), all started before this returns: for a
    server, whose main script must not run again in them either."""
    pool = ProcessPoolExecutor(workers, mp_context=_context())
    with _main_script_hidden():  # each submit starts a process while none is idle
        started = [pool.submit(os.getpid) for _ in range(workers)]
    for future in started:
        future.result()
    return pool


def _context() -> multiprocessing.context.BaseContext:
    """Workers forked from a fresh server process that has imported the preprocessing once (``forkserver``:
    one import for all workers, about 0.35 s of CPU each saved), or spawned where there is no such server."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["mnist_cnn.preprocess"])
    return context


@contextmanager
def _main_script_hidden() -> Iterator[None]:
    """Start workers without running the parent's main script in each of them first.

    A spawned worker imports the script the parent was started as, so that its functions can be found
    (multiprocessing's "safe importing of main"). For the ``mnist-cnn`` command that is the whole CLI with
    PyTorch, about 1.7 s of CPU per worker that preprocessing never uses (:func:`frame_or_error` lives
    here). With no ``__file__`` to go by, multiprocessing leaves the workers' main module empty. A main
    module run by name (``python -m``) is left alone: multiprocessing imports it by name, if at all.
    """
    main = sys.modules["__main__"]
    script = getattr(main, "__file__", None)
    if script is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = script
