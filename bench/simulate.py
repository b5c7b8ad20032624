"""Where a sweep's ceiling is on a cluster: a discrete-event simulation driven by stage costs measured here (issue 25).

    python bench/simulate.py [--space bench/cost.yaml] [--trials 12] [--nodes 8] [--gpus 8] [--replicas 1,2,4,8]
                             [--out bench/results/simulate.json]

1. Measure: a real sweep of the space on this machine (one node, as many trials at once as it holds, the
   measurement service pausing training while it times). From its trials.jsonl, per trial: distillation
   seconds per step (paused time left out), the trial's other stages (pruning, quantization, export,
   held-out scoring), the service's busy time for its model, the trial's fixed cost (its wall time less all
   of those and its queueing), and the tracker's cost per trial (`tracking_ms_per_trial`, every MLflow call
   timed); the driver's cost to start a trial is the gap between a trial ending and the next one starting,
   less that tracking.
2. Check: the same sweep simulated on this node (its slots and service, each distillation as long as it ran
   with its pauses: every measurement on the node paused it, this sweep's and any other's) against the
   trials per hour measured in step 1. (`pause=True` models the pauses instead, from this sweep's own
   measurements only.)
3. Predict: `nodes` x `gpus` slots, each running a trial at the speed measured here (`--distill-speedup`
   scales distillation, e.g. for GPUs), with 1..R measurement replicas on target nodes of their own (nothing
   pauses), one driver (Tune's loop: it starts every trial and records every end). Reports trials per hour
   and each resource's utilisation; the first bottleneck is the busiest resource.

Prints the figures and writes them as JSON. Not a test of the product: a model of it, checked in step 2.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orchestrator


@dataclass(frozen=True)
class Costs:
    """One measured trial's costs, in seconds."""

    distill: float  # training work (paused time left out)
    paused: float  # time its training stood paused while a measurement service on its node timed a model
    stages: float  # its other stages, in the trial
    measure: float  # the service's busy time for its model
    fixed: float  # the rest of its wall time: loading, start-up, reporting


@dataclass(frozen=True)
class Measured:
    trials: list[Costs]
    start_s: float  # the driver's cost to start a trial
    record_s: float  # the driver's cost to record a trial's end (tracking)
    slots: int  # trials at once in the measured sweep
    trials_per_hour: float  # measured, over the trial phase


def measure(space: str, trials: int, root: Path) -> Measured:
    """Step 1: run the sweep here and read its costs."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    result = orchestrator.Sweep.from_yaml(space, trials=trials, storage=str(root / "runs"), tracking_uri=uri).run()
    done = result.trials[result.trials["status"] == "COMPLETED"]
    costs, spans = [], []
    for row in done.to_dict(orient="records"):
        busy = row["measure_ended_at"] - row["measure_started_at"]
        distill = row["time_distill_s"] - row.get("distill_paused_s", 0.0)
        wall = row["trial_ended_at"] - row["trial_started_at"]
        stages = row["time_stages_s"] - row["time_distill_s"] - busy
        fixed = wall - row["time_stages_s"] - row["time_measure_wait_s"]  # paused time is inside the distillation's stage
        costs.append(Costs(distill=distill, paused=row.get("distill_paused_s", 0.0), stages=max(0.0, stages), measure=busy,
                           fixed=max(0.0, fixed)))
        spans.append((row["trial_started_at"], row["trial_ended_at"]))
    metrics = MlflowClient(uri).get_run(result.run_id).data.metrics
    record = metrics["tracking_ms_per_trial"] / 1000
    ends = sorted(e for _, e in spans)
    gaps = []  # a trial that started once another had ended: the driver's turnaround
    for start, _ in sorted(spans)[result.config.max_concurrent_trials or 2:]:
        before = [e for e in ends if e <= start]
        if before:
            gaps.append(start - before[-1])
    slots = int(len(spans) and max(sum(s <= t < e for s, e in spans) for t, _ in spans))
    first, last = min(s for s, _ in spans), max(ends)
    return Measured(trials=costs, start_s=max(0.0, statistics.median(gaps) - record) if gaps else 0.0, record_s=record,
                    slots=max(1, slots), trials_per_hour=3600 * len(spans) / (last - first))


@dataclass
class _Trial:
    costs: Costs
    left: float  # distillation work left
    since: float = 0.0  # when `left` was last brought up to date
    version: int = 0  # invalidates its scheduled end when a pause moves it


class Simulation:
    """`slots` trials at once, `replicas` measurement servers (FIFO), one driver (FIFO); with `pause`, every
    distillation stops while a replica measures (one node, its service pausing training)."""

    def __init__(self, measured: Measured, *, slots: int, replicas: int, pause: bool, trials: int, distill_speedup: float = 1.0,
                 as_measured: bool = False):
        self.m, self.slots, self.replicas, self.pause, self.total = measured, slots, replicas, pause, trials
        self.as_measured = as_measured  # each distillation as long as it ran, its pauses included (every pause on its node)
        self.speed = distill_speedup
        self.events: list[tuple[float, int, str, object]] = []
        self.order = itertools.count()
        self.now = 0.0
        self.busy = {"slots": 0.0, "service": 0.0, "driver": 0.0}
        self.driver_free_at = 0.0
        self.service_queue: list[_Trial] = []
        self.service_free = replicas
        self.distilling: list[_Trial] = []
        self.started = self.ended = 0
        self.costs = itertools.cycle(measured.trials)

    def at(self, t: float, what: str, item: object = None) -> None:
        heapq.heappush(self.events, (t, next(self.order), what, item))

    def driver(self, seconds: float, what: str, item: object = None) -> None:
        """A job for the driver: done `seconds` after it is free."""
        start = max(self.now, self.driver_free_at)
        self.driver_free_at = start + seconds
        self.busy["driver"] += seconds
        self.at(self.driver_free_at, what, item)

    def measuring(self) -> bool:
        return self.service_free < self.replicas

    def _settle(self) -> None:
        """Bring every distillation's work left up to now (none progresses while paused)."""
        for t in self.distilling:
            if not (self.pause and self.measuring()):
                t.left -= self.now - t.since
            t.since = self.now

    def _reschedule(self) -> None:
        for t in self.distilling:
            t.version += 1
            if not (self.pause and self.measuring()):
                self.at(self.now + max(0.0, t.left), "distilled", (t, t.version))

    def run(self) -> dict[str, float]:
        for _ in range(min(self.slots, self.total)):
            self.started += 1
            self.driver(self.m.start_s, "start")
        while self.events:
            self.now, _, what, item = heapq.heappop(self.events)
            getattr(self, f"_on_{what}")(item)
        return {"trials": self.ended, "hours": self.now / 3600, "trials_per_hour": 3600 * self.ended / self.now,
                "utilisation": {k: round(v / (self.now * n), 3) for (k, v), n in
                                zip(self.busy.items(), (self.slots, self.replicas, 1))}}

    def _on_start(self, _: object) -> None:
        c = next(self.costs)
        distill = (c.distill + c.paused) if self.as_measured else c.distill / self.speed
        self.busy["slots"] += c.fixed + distill + c.stages
        self.at(self.now + c.fixed, "train", _Trial(c, distill))

    def _on_train(self, t: _Trial) -> None:
        self._settle()
        t.since = self.now
        self.distilling.append(t)
        self._reschedule()

    def _on_distilled(self, item: tuple[_Trial, int]) -> None:
        t, version = item
        if version != t.version:
            return
        self._settle()
        self.distilling.remove(t)
        self.at(self.now + t.costs.stages, "measure", t)

    def _on_measure(self, t: _Trial) -> None:
        self.service_queue.append(t)
        self._serve()

    def _serve(self) -> None:
        while self.service_free and self.service_queue:
            t = self.service_queue.pop(0)
            self._settle()
            self.service_free -= 1
            self.busy["service"] += t.costs.measure
            self.busy["slots"] += t.costs.measure  # the trial waits for it, holding its slot
            self.at(self.now + t.costs.measure, "measured", t)
            self._reschedule()

    def _on_measured(self, t: _Trial) -> None:
        self._settle()
        self.service_free += 1
        self._reschedule()
        self._serve()
        self.driver(self.m.record_s, "recorded")

    def _on_recorded(self, _: object) -> None:
        self.ended += 1
        if self.started < self.total:
            self.started += 1
            self.driver(self.m.start_s, "start")


def bottleneck(utilisation: dict[str, float]) -> str:
    name = max(utilisation, key=utilisation.get)
    return {"slots": "training slots", "service": "measurement service", "driver": "the driver (starting and recording trials)"}[name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="bench/cost.yaml")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--replicas", default="1,2,4,8")
    parser.add_argument("--distill-speedup", type=float, default=1.0, help="distillation on a slot of the cluster vs here")
    parser.add_argument("--simulated-trials", type=int, default=5000)
    parser.add_argument("--out", default="bench/results/simulate.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        measured = measure(args.space, args.trials, Path(tmp))
    here = Simulation(measured, slots=measured.slots, replicas=1, pause=False, trials=len(measured.trials), as_measured=True).run()
    figures = {
        "space": args.space, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"),
        "measured": {"trials": len(measured.trials), "slots": measured.slots, "trials_per_hour": round(measured.trials_per_hour, 1),
                     "driver_start_s": round(measured.start_s, 4), "driver_record_s": round(measured.record_s, 4),
                     "median_s": {k: round(statistics.median(getattr(c, k) for c in measured.trials), 4)
                                  for k in ("distill", "stages", "measure", "fixed")}},
        "check_one_node": {"simulated_trials_per_hour": round(here["trials_per_hour"], 1),
                           "relative_error": round(here["trials_per_hour"] / measured.trials_per_hour - 1, 3)},
        "cluster": {"nodes": args.nodes, "gpus_per_node": args.gpus, "distill_speedup": args.distill_speedup, "by_replicas": {}},
    }
    for r in (int(x) for x in args.replicas.split(",")):
        sim = Simulation(measured, slots=args.nodes * args.gpus, replicas=r, pause=False, trials=args.simulated_trials,
                         distill_speedup=args.distill_speedup).run()
        figures["cluster"]["by_replicas"][r] = {"trials_per_hour": round(sim["trials_per_hour"]), "utilisation": sim["utilisation"],
                                                "bottleneck": bottleneck(sim["utilisation"])}
    print(json.dumps(figures, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
