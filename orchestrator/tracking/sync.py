"""`orchestrator sync SWEEP_ID`: deliver what a sweep journaled while its MLflow store was away.

The sweep's journal (`tracking.journal`) is in its storage; its config (`config.yaml` there) names the
experiment, the tracking store and the retry window. Delivering is idempotent: a second sync, or a sync
after the sweep delivered its journal itself, delivers nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from orchestrator.core.environ import DEFAULT_STORAGE, STORAGE_ENV, from_env
from orchestrator.core.environ import tracking_uri as default_tracking_uri
from orchestrator.core.errors import ConfigError, show
from orchestrator.io.storage import Storage
from orchestrator.io.sweep_files import CONFIG_FILE, JOURNAL_DIR, SweepFiles
from orchestrator.tracking.journal import Journal
from orchestrator.tracking.mlflow_store import MlflowTracker, client_settings


@dataclass(frozen=True)
class Synced:
    sweep_id: str
    tracking_uri: str
    delivered: int  # records delivered now
    left: int  # records still waiting (the store away again)
    journal: str  # where the journal is


def sync(sweep_id: str, *, storage: str | None = None, tracking_uri: str | None = None) -> Synced:
    """Deliver the journal of sweep `sweep_id` in `storage` (default: $ORCHESTRATOR_STORAGE, else ./orchestrator_runs)
    to `tracking_uri` (default: the sweep's own, from its config). `ConfigError` for a sweep that is not there."""
    where, _ = from_env(storage, STORAGE_ENV, DEFAULT_STORAGE)
    files = SweepFiles(Storage(str(where)), sweep_id)
    text = files.read_text(CONFIG_FILE)
    if text is None:
        raise ConfigError(f"sync {sweep_id}: no sweep of that id in storage {show(str(where))} (no {files.location(CONFIG_FILE)}); "
                          "give the storage it ran with (--storage)")
    config = yaml.safe_load(text)
    files.pull_journal()
    journal = Journal(files.path(JOURNAL_DIR), publish=files.store.publish)
    uri = tracking_uri or config.get("tracking_uri") or default_tracking_uri(None)
    if not journal:
        return Synced(sweep_id, uri, 0, 0, str(journal.directory))
    with client_settings():
        tracker = MlflowTracker(uri, config.get("experiment") or config.get("name"), outage_s=float(config.get("tracking_retry_s", 180.0)))
        tracker.journal = journal
        delivered = tracker.flush(wait=True)
    return Synced(sweep_id, uri, delivered, journal.waiting(), str(journal.directory))
