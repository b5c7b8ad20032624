"""Tracking: where a sweep's records go, behind one interface (`base.Tracker`), with an MLflow implementation
(`mlflow_store`) and an in-memory one (`memory`). `sweep_runs` and `front` are what a sweep records, start
to end; `models` and `pyfunc` are the front's loadable MLflow models (the loader needs torch and this
package only); `compare` and `ui` read sweeps back. The MLflow-specific modules are the only ones that
import mlflow."""
