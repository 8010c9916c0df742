r"""Fan-out of independent runs (methods, seeds, simulated observations) over an executor.

Every run of a comparison or a calibration is a job that carries its own seed, so it gives
the same result wherever it runs. Locally the jobs run one after the other with no extra
dependency; with an executor they are submitted at once and gathered in their original
order. Any process-based :class:`concurrent.futures.Executor` works (a
``ProcessPoolExecutor`` on one machine; threads are refused, since Pyro's handler stack is
global to a process), and so does a Dask ``distributed.Client`` with one thread a worker
(``pip install "condgen[dask]"``), whose ``get_executor()`` is used: Dask was chosen because
its client *is* a standard executor, so the local path and the cluster path share all their
code.

Example:
    >>> import condgen
    >>> from condgen.methods import Importance
    >>> from distributed import Client, LocalCluster
    >>> task = condgen.evaluate.NormalNormal(dim=1)
    >>> draws = task.reference_samples(1000)
    >>> # in-process here; on a real cluster: LocalCluster(n_workers=2), or Client(address).
    >>> # One thread per worker: Pyro's handler stack is global, so runs in threads collide.
    >>> with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
    ...                   dashboard_address=None) as cluster, Client(cluster) as client:
    ...     report = condgen.compare(task.model, task.data, seeds=range(3), reference=draws,
    ...                              methods={"importance": Importance(proposal="prior")},
    ...                              executor=client, progress=False)
    >>> int(report.table["seeds"].iloc[0])
    3
"""

from __future__ import annotations

__all__ = ["as_executor", "map_jobs"]

from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor, as_completed
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


_THREADS = (
    "runs cannot share a process in threads ({what}): Pyro's handler stack is global to the "
    "process, so concurrent runs would corrupt each other; use a ProcessPoolExecutor, or a "
    "Dask cluster with threads_per_worker=1"
)


def as_executor(executor: Any) -> Executor | None:
    r"""Returns ``executor`` as a :class:`concurrent.futures.Executor` (None stays None).

    Accepts an executor, or a Dask ``distributed.Client`` (through ``get_executor()``).

    Raises:
        ValueError: For executors that run jobs in several threads of one process (a
            ``ThreadPoolExecutor``, a Dask worker with more than one thread): Pyro's handler
            stack is shared by the threads, so runs would collide.
    """
    if isinstance(executor, ThreadPoolExecutor) and executor._max_workers > 1:
        raise ValueError(_THREADS.format(what="a ThreadPoolExecutor with several threads"))
    if executor is None or isinstance(executor, Executor):
        return executor
    if callable(getattr(executor, "get_executor", None)):
        nthreads = getattr(executor, "nthreads", None)
        if callable(nthreads) and max(nthreads().values(), default=1) > 1:
            raise ValueError(_THREADS.format(what="a Dask cluster with several threads a worker"))
        return executor.get_executor()
    raise TypeError(
        "executor must be a concurrent.futures.Executor or a Dask distributed.Client, "
        f"got {type(executor).__name__}"
    )


def map_jobs(
    fn: Callable[..., T],
    jobs: Iterable[tuple],
    *,
    executor: Any = None,
    progress: bool = False,
    desc: str = "",
) -> list[T]:
    r"""Runs ``fn(*job)`` for every job and returns the results in the order of ``jobs``.

    Arguments:
        fn: A picklable function (a module-level function) when an executor is given.
        jobs: Argument tuples, one per run.
        executor: None to run locally, one job after the other; or a
            :class:`concurrent.futures.Executor` or Dask ``distributed.Client``.
        progress: Whether to show a progress bar over the jobs.
        desc: The progress bar's label.
    """
    jobs = list(jobs)
    executor = as_executor(executor)
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, leave=False)
    with bar:
        if executor is None:
            results = []
            for job in jobs:
                results.append(fn(*job))
                bar.update()
            return results
        futures = {executor.submit(fn, *job): i for i, job in enumerate(jobs)}
        results: list[Any] = [None] * len(jobs)
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            bar.update()
        return results
