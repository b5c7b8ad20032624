"""A sweep started from a Ray Client (`address: ray://HOST:10001`).

Through Ray Client, Ray Tune runs its loop on the cluster anyway, and the sweep's callbacks (the trials
table, the front, MLflow) with it, out of this process's reach. So the whole sweep driver runs on the
cluster as one task, on the node that serves the client (the head), and sends its log lines and progress
back: this process logs them and calls `progress` as a local sweep would, and gets the `SweepResult`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("orchestrator")


def is_client(address: str | None) -> bool:
    return str(address or "").startswith("ray://")


def connect(address: str, attempts: int = 3, **init: Any) -> None:
    """`ray.init(address, **init)` through Ray Client, tried `attempts` times: the client server on the head
    starts a server process per client and now and then loses the race with its start-up (its
    `ZombieProcess` / "Initialization failure from server"); a second try gets a fresh one."""
    import time

    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, **init)
            return
        except ConnectionError as e:
            if attempt == attempts:
                raise ConnectionError(f"Ray Client could not connect to {address} in {attempts} tries: "
                                      f"{str(e).strip().splitlines()[-1]}") from e
            log.warning("Ray Client connection to %s failed (%s); trying again", address, str(e).strip().splitlines()[-1])
            ray.shutdown()
            time.sleep(2 * attempt)


class _QueueHandler(logging.Handler):
    def __init__(self, queue: Any) -> None:
        super().__init__(logging.INFO)
        self.queue = queue

    def emit(self, record: logging.LogRecord) -> None:
        self.queue.put(("log", record.levelno, record.getMessage()))


def _drive(run: Callable[[Callable[[Any], None]], Any], queue: Any) -> Any:
    """The remote driver: `run(send_progress)` with the package's log lines sent back too."""
    handler = _QueueHandler(queue)
    package = logging.getLogger("orchestrator")
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        return run(lambda p: queue.put(("progress", p)))
    finally:
        package.removeHandler(handler)


def run_on_cluster(run: Callable[[Callable[[Any], None]], Any], progress: Callable[[Any], None] | None) -> Any:
    """Run `run(send_progress)` on the node serving this Ray Client; relay its log lines and progress here
    until it returns, and return what it returns. Ctrl-C cancels it."""
    import ray
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    queue = Queue(actor_options={"num_cpus": 0})
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    task = ray.remote(num_cpus=0, max_retries=0)(_drive).options(scheduling_strategy=here).remote(run, queue)

    def relay() -> None:
        while not queue.empty():
            item = queue.get()
            if item[0] == "log":
                log.log(item[1], "%s", item[2])
            elif progress is not None:
                progress(item[1])

    try:
        while not ray.wait([task], timeout=0.5)[0]:
            relay()
        relay()
        return ray.get(task)
    except KeyboardInterrupt:
        ray.cancel(task)
        raise
    finally:
        ray.kill(queue.actor)
